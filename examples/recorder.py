"""Record a voice channel with discord.py + fastvoice: one Opus file per speaker.

Commands (in any text channel, while you are in a voice channel):

- ``!record``: join your voice channel and record everyone in it
- ``!stop``: stop recording and leave

Each user's Opus frames go to ``recordings/<guild id>/<user id>.dca``, as received (no
re-encoding): every frame is prefixed with its length as a 4-byte little-endian integer, the
format of ``fastvoice.OpusReader`` / ``fastvoice.OpusWriter``, so a file plays back with
``vc.play(fastvoice.OpusReader(open(path, "rb")))``. Pauses are not in the files (Discord
clients stop sending a few silence frames after they go quiet), so speech comes back to back.

Run it:

    pip install -e ".[test]"            # fastvoice + discord.py (no voice extra needed)
    DISCORD_TOKEN=... python examples/recorder.py

The bot needs the Message Content intent (Developer Portal -> Bot). Tell people they are
being recorded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import BinaryIO

import discord
from discord.ext import commands

import fastvoice
import fastvoice.ext.discord as fastvoice_discord

log = logging.getLogger("recorder")

RECORDINGS = Path("recordings")



class PerUserFiles:
    """A fastvoice ``OpusFrameReceiver``: one length-prefixed ``.dca`` file per user.

    Files are opened on a user's first frame (appending, so a user who leaves and comes back
    continues their file) and closed when the user leaves the call or the recording stops.
    The bot runs it inside a ``fastvoice.ThreadedOpusFrameReceiver``: the writes happen in that
    receiver's thread, so a slow disk never holds up the event loop.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[int, BinaryIO] = {}
        self._writers: dict[int, fastvoice.OpusWriter] = {}

    def receive_opus_frame(self, user_id: int, packet: fastvoice.Packet) -> None:
        writer = self._writers.get(user_id)
        if writer is None:
            file = open(self.directory / f"{user_id}.dca", "ab")
            self._files[user_id] = file
            writer = self._writers[user_id] = fastvoice.OpusWriter(file)
            log.info("recording user %d", user_id)
        writer.receive_opus_frame(user_id, packet)

    def cleanup_user(self, user_id: int) -> None:
        self._writers.pop(user_id, None)
        file = self._files.pop(user_id, None)
        if file is not None:
            file.close()

    def close(self) -> None:
        for user_id in list(self._files):
            self.cleanup_user(user_id)


def make_bot() -> commands.Bot:
    """The bot and its commands (made at run time: a bot needs the event loop it runs on)."""
    intents = discord.Intents.default()
    intents.message_content = True
    bot = commands.Bot(command_prefix="!", intents=intents)

    @bot.command()
    async def record(ctx: commands.Context) -> None:
        """Join the author's voice channel and record it."""
        voice = getattr(ctx.author, "voice", None)
        if voice is None or voice.channel is None:
            await ctx.send("Join a voice channel first.")
            return
        vc = ctx.voice_client or await voice.channel.connect(cls=fastvoice_discord.VoiceClient)
        directory = RECORDINGS / str(ctx.guild.id)
        vc.listen(fastvoice.ThreadedOpusFrameReceiver(PerUserFiles(directory)))
        await ctx.send(f"Recording {voice.channel.name} into {directory}/")

    @bot.command()
    async def stop(ctx: commands.Context) -> None:
        """Stop recording and leave (the files are closed)."""
        vc = ctx.voice_client
        if vc is not None:
            vc.stop_listening()
            await vc.disconnect()
            await ctx.send("Recording stopped.")

    return bot


def main() -> None:
    token = os.environ.get("DISCORD_TOKEN")
    if not token:
        raise SystemExit("set DISCORD_TOKEN to the bot's token")
    logging.basicConfig(level=logging.INFO)
    make_bot().run(token)


if __name__ == "__main__":
    main()
