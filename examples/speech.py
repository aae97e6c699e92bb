"""Cut what people say in a voice channel into utterances, ready for a speech recogniser.

Commands (in any text channel, while you are in a voice channel):

- ``!listen``: join your voice channel; every phrase anyone says is printed with its speaker
  and length (and, once you plug one in, what a recogniser made of it)
- ``!stop``: stop and leave

A ``fastvoice.PlayoutReceiver`` buffers each user's packets, conceals losses and decodes them
on its own threads; ``receiver.utterances()`` cuts each user's audio into phrases at pauses
and resamples them to 16 kHz mono, what most recognisers take. No recogniser ships with this
example: :func:`recognise` is where one plugs in (Whisper, Vosk, a cloud API...). Recognisers
are slow, so it runs in a thread (``asyncio.to_thread``), never on the event loop.

Run it:

    pip install -e ".[test]"            # fastvoice + discord.py
    DISCORD_TOKEN=... python examples/speech.py

The system needs libopus (Debian/Ubuntu ``apt install libopus0``, macOS ``brew install
opus``). The bot needs the Message Content intent (Developer Portal -> Bot). Tell people they
are being listened to.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import discord
from discord.ext import commands

import fastvoice
import fastvoice.ext.discord as fastvoice_discord
from fastvoice.utterances import Utterance

log = logging.getLogger("speech")


def recognise(utterance: Utterance) -> str | None:
    """Plug a speech recogniser in here: ``utterance.pcm`` is s16le PCM at
    ``utterance.sample_rate`` (16000) with ``utterance.channels`` (1). Return the text, or
    None. For example, with the ``vosk`` package::

        rec = vosk.KaldiRecognizer(MODEL, utterance.sample_rate)
        rec.AcceptWaveform(utterance.pcm)
        return json.loads(rec.FinalResult())["text"]
    """
    return None


def describe(utterance: Utterance, text: str | None) -> str:
    """One line per utterance: who, when, how long (and the text, if any)."""
    line = (f"user {utterance.user_id}: {utterance.end - utterance.start:.2f} s "
            f"({len(utterance.pcm)} bytes at {utterance.sample_rate} Hz)")
    return line if text is None else f"{line}: {text}"


async def print_utterances(receiver: fastvoice.PlayoutReceiver, out: Callable[[str], object] = print,
                           recogniser: Callable[[Utterance], str | None] = recognise) -> None:
    """Print each utterance of ``receiver``'s call until the receiver closes."""
    async for utterance in receiver.utterances(silence=0.5, min_length=0.3, sample_rate=16000, channels=1):
        text = await asyncio.to_thread(recogniser, utterance)
        out(describe(utterance, text))


def make_bot() -> commands.Bot:
    """The bot and its commands (made at run time: a bot needs the event loop it runs on)."""
    intents = discord.Intents.default()
    intents.message_content = True
    bot = commands.Bot(command_prefix="!", intents=intents)
    tasks: dict[int, asyncio.Task[None]] = {}

    @bot.command()
    async def listen(ctx: commands.Context) -> None:
        """Join the author's voice channel and print its utterances."""
        voice = getattr(ctx.author, "voice", None)
        if voice is None or voice.channel is None:
            await ctx.send("Join a voice channel first.")
            return
        vc = ctx.voice_client or await voice.channel.connect(cls=fastvoice_discord.VoiceClient)
        receiver = fastvoice.PlayoutReceiver()
        vc.listen(receiver)
        tasks[ctx.guild.id] = asyncio.create_task(print_utterances(receiver))
        await ctx.send(f"Listening to {voice.channel.name}.")

    @bot.command()
    async def stop(ctx: commands.Context) -> None:
        """Stop listening and leave."""
        vc = ctx.voice_client
        if vc is not None:
            vc.stop_listening()  # closes the receiver: the utterance stream ends
            await vc.disconnect()
        task = tasks.pop(ctx.guild.id, None)
        if task is not None:
            await task

    return bot


def main() -> None:
    token = os.environ.get("DISCORD_TOKEN")
    if not token:
        raise SystemExit("set DISCORD_TOKEN to the bot's token")
    logging.basicConfig(level=logging.INFO)
    make_bot().run(token)


if __name__ == "__main__":
    main()
