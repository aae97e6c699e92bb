"""A discord.py music bot whose voice runs on fastvoice.

Commands (in any text channel, while you are in a voice channel):

- ``!play <url>``: join your voice channel (or move to it) and play through ffmpeg
- ``!pause``, ``!resume``, ``!stop``, ``!leave``

Run it:

    pip install -e ".[test]"            # fastvoice + discord.py (no voice extra needed)
    apt-get install ffmpeg              # or your system's ffmpeg package
    DISCORD_TOKEN=... python examples/music_bot.py

The bot needs the Message Content intent (Developer Portal -> Bot). Whoever can type
``!play`` chooses what ffmpeg opens, so the argument goes through
``FFmpegOpusProvider(..., safe=True)``: http/https URLs of public hosts only, never a local
file, a ``file:``/``concat:`` input or an internal address (see the README). Set
``MUSIC_DIR`` to also play files by name from that directory.
"""

from __future__ import annotations

import logging
import os

import discord
from discord.ext import commands

import fastvoice.ext.discord as fastvoice_discord
from fastvoice import FFmpegOpusProvider, UnsafeSourceError

log = logging.getLogger("music_bot")


# Network inputs: let ffmpeg reconnect when the HTTP stream drops.
STREAM_OPTIONS = "-reconnect 1 -reconnect_streamed 1 -reconnect_delay_max 5"


async def join_author(ctx: commands.Context) -> fastvoice_discord.VoiceClient | None:
    """The guild's voice client, in the author's voice channel."""
    voice = getattr(ctx.author, "voice", None)
    if voice is None or voice.channel is None:
        await ctx.send("Join a voice channel first.")
        return None
    vc = ctx.voice_client
    if vc is None:
        return await voice.channel.connect(cls=fastvoice_discord.VoiceClient)
    if vc.channel != voice.channel:
        await vc.move_to(voice.channel)  # what is playing keeps playing
    return vc


async def make_source(what: str) -> FFmpegOpusProvider:
    """An ffmpeg source for what a user typed: a public URL, or a file of MUSIC_DIR by name."""
    music_dir = os.environ.get("MUSIC_DIR")
    if music_dir and not what.startswith(("http://", "https://")):
        name = os.path.basename(what)  # a name in that directory, never a path out of it
        path = os.path.join(music_dir, name)
        if not name or not os.path.isfile(path):
            raise UnsafeSourceError(f"no file named {name!r} in the music directory")
        source = FFmpegOpusProvider(path, safe=True, allow_local_files=True)
    else:
        source = FFmpegOpusProvider(what, safe=True, before_options=STREAM_OPTIONS)
    await source.start()  # refuses a host that is not public, before ffmpeg runs
    return source


def make_bot() -> commands.Bot:
    """The bot and its commands (made at run time: a bot needs the event loop it runs on)."""
    intents = discord.Intents.default()
    intents.message_content = True
    bot = commands.Bot(command_prefix="!", intents=intents)

    @bot.command()
    async def play(ctx: commands.Context, *, what: str) -> None:
        """Play a URL or a file through ffmpeg."""
        vc = await join_author(ctx)
        if vc is None:
            return
        try:
            source = await make_source(what)
        except UnsafeSourceError as refused:
            await ctx.send(f"Not playing that: {refused}")
            return
        vc.stop()  # replace whatever plays now

        def finished(error: Exception | None) -> None:
            # Runs on the event loop once the song ends, fails or is stopped.
            if error is not None:
                log.warning("playing %s failed: %s", what, error)
                bot.loop.create_task(ctx.send(f"Could not play {what}: {error}"))

        vc.play(source, after=finished)
        await ctx.send(f"Playing {what}")

    @bot.command()
    async def pause(ctx: commands.Context) -> None:
        """Pause the song."""
        if ctx.voice_client is not None:
            ctx.voice_client.pause()

    @bot.command()
    async def resume(ctx: commands.Context) -> None:
        """Resume a paused song."""
        if ctx.voice_client is not None:
            ctx.voice_client.resume()

    @bot.command()
    async def stop(ctx: commands.Context) -> None:
        """Stop the song, stay in the channel."""
        if ctx.voice_client is not None:
            ctx.voice_client.stop()

    @bot.command()
    async def leave(ctx: commands.Context) -> None:
        """Leave the voice channel."""
        if ctx.voice_client is not None:
            await ctx.voice_client.disconnect()

    return bot


def main() -> None:
    token = os.environ.get("DISCORD_TOKEN")
    if not token:
        raise SystemExit("set DISCORD_TOKEN to the bot's token")
    logging.basicConfig(level=logging.INFO)
    make_bot().run(token)


if __name__ == "__main__":
    main()
