"""Record a voice channel with discord.py + fastvoice: one aligned track per speaker, and a mix.

Commands (in any text channel, while you are in a voice channel):

- ``!record``: join your voice channel and record everyone in it
- ``!stop``: stop recording and leave

A ``fastvoice.record.CallRecorder`` writes into ``recordings/<guild id>/<start time>/``:

- ``<user id>.ogg``: each speaker's Opus packets as received (no re-encoding), in an Ogg Opus
  file that any player opens; pauses and losses are filled, so every track starts when the
  recording started and all tracks stay aligned (drop them into an editor side by side);
- ``mix.wav``: everyone together, 48 kHz stereo.

The files are valid while the recording runs (Ogg pages and WAV headers are written about
once a second) and are finished when it stops, when the bot disconnects, or when the program
ends, an exception included. The disk writes happen in a writer thread, never on the event
loop.

Run it:

    pip install -e ".[test]"            # fastvoice + discord.py (no voice extra needed)
    DISCORD_TOKEN=... python examples/recorder.py

The system needs libopus (Debian/Ubuntu ``apt install libopus0``, macOS ``brew install
opus``). The bot needs the Message Content intent (Developer Portal -> Bot). Tell people they
are being recorded.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import discord
from discord.ext import commands

import fastvoice.ext.discord as fastvoice_discord
from fastvoice.record import CallRecorder

log = logging.getLogger("recorder")

RECORDINGS = Path("recordings")


def start_recording(vc: fastvoice_discord.VoiceClient, directory: Path) -> CallRecorder:
    """Record everyone else in ``vc``'s channel into ``directory`` (per-user Ogg + a mix).

    Make the recorder on the event loop: its timeline (the recording's start) starts now."""
    recorder = CallRecorder(directory, formats=("ogg",), mix=True)
    vc.listen(recorder)
    return recorder


async def stop_recording(vc: fastvoice_discord.VoiceClient, recorder: CallRecorder) -> None:
    """Stop listening and wait until every file is final."""
    vc.stop_listening()  # closes the recorder
    if not await recorder.wait_closed(timeout=30):
        log.warning("the recording in %s is still being written", recorder.directory)


def make_bot() -> commands.Bot:
    """The bot and its commands (made at run time: a bot needs the event loop it runs on)."""
    intents = discord.Intents.default()
    intents.message_content = True
    bot = commands.Bot(command_prefix="!", intents=intents)
    recorders: dict[int, CallRecorder] = {}

    @bot.command()
    async def record(ctx: commands.Context) -> None:
        """Join the author's voice channel and record it."""
        voice = getattr(ctx.author, "voice", None)
        if voice is None or voice.channel is None:
            await ctx.send("Join a voice channel first.")
            return
        vc = ctx.voice_client or await voice.channel.connect(cls=fastvoice_discord.VoiceClient)
        directory = RECORDINGS / str(ctx.guild.id) / time.strftime("%Y%m%d-%H%M%S")
        recorders[ctx.guild.id] = start_recording(vc, directory)
        await ctx.send(f"Recording {voice.channel.name} into {directory}/")

    @bot.command()
    async def stop(ctx: commands.Context) -> None:
        """Stop recording and leave (the files are finished)."""
        vc = ctx.voice_client
        recorder = recorders.pop(ctx.guild.id, None)
        if vc is not None:
            if recorder is not None:
                await stop_recording(vc, recorder)
                users = ", ".join(str(u) for u in sorted(recorder.users)) or "nobody"
                await ctx.send(f"Recorded {recorder.duration:.0f} s of {users} into {recorder.directory}/")
            await vc.disconnect()

    return bot


def main() -> None:
    token = os.environ.get("DISCORD_TOKEN")
    if not token:
        raise SystemExit("set DISCORD_TOKEN to the bot's token")
    logging.basicConfig(level=logging.INFO)
    make_bot().run(token)


if __name__ == "__main__":
    main()
