"""FFmpegOpusProvider(safe=True): what an untrusted ``!play <url>`` may make ffmpeg open.

Refused before ffmpeg starts: local paths, ``file:``, ``concat:``, ``subfile:``, ``data:``,
``pipe:`` and every protocol not allowed, and (at start) hosts that are not public. Refused by
ffmpeg itself through ``-protocol_whitelist``: whatever a playlist or a concatenation script
served over HTTP names (here, a local file). A plain HTTP URL plays.
"""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from aiohttp import web

from fastvoice import FFmpegError, FFmpegOpusProvider, UnsafeSourceError

from test_ffmpeg import drain, require_ffmpeg


@pytest.fixture
def media(tmp_path):
    """A 1-second MP3 that stands for a private file on the bot's machine."""
    require_ffmpeg()
    secret = tmp_path / "secret.mp3"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi", "-i",
         "sine=frequency=440:duration=1", "-c:a", "libmp3lame", str(secret)],
        check=True, timeout=60,
    )
    return secret


@pytest.fixture
async def http(media):
    """An HTTP server on 127.0.0.1: a song, an HLS playlist and a concat script that name the private file."""
    song = media.read_bytes()
    playlist = (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\n"
        f"file://{media}\n#EXT-X-ENDLIST\n"
    )
    script = f"ffconcat version 1.0\nfile 'file:{media}'\n"
    routes = {
        "/song.mp3": (song, "audio/mpeg"),
        "/list.m3u8": (playlist.encode(), "application/vnd.apple.mpegurl"),
        "/list.ffconcat": (script.encode(), "text/plain"),
    }

    async def handle(request):
        body, kind = routes[request.path]
        return web.Response(body=body, content_type=kind)

    app = web.Application()
    for path in routes:
        app.router.add_get(path, handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


# -- refused before ffmpeg starts ---------------------------------------------------------------


@pytest.mark.parametrize("source", [
    "/etc/passwd",
    "song.mp3",
    "../../etc/passwd",
    "-",
    "file:/etc/passwd",
    "file:///etc/passwd",
    "FILE:///etc/passwd",
    "concat:/etc/passwd|/etc/hostname",
    "subfile,,start,0,end,100,,:/etc/passwd",
    "data:audio/mpeg;base64,AAAA",
    "pipe:0",
    "tcp://127.0.0.1:6379",
    "ftp://example.com/a.mp3",
    "async:http://example.com/a.mp3",
    "cache:http://example.com/a.mp3",
    "crypto+http://example.com/a.mp3",
    "http:/example.com/a.mp3",
    "http:///a.mp3",
    " http://example.com/a.mp3",
    "http://example.com/a.mp3\n-i /etc/passwd",
])
def test_refused_sources_raise_before_ffmpeg_starts(source):
    with pytest.raises(UnsafeSourceError) as info:
        FFmpegOpusProvider(source, safe=True)
    assert len(str(info.value)) < 300


def test_without_safe_mode_nothing_changes():
    plain = FFmpegOpusProvider("/etc/passwd")
    assert "-protocol_whitelist" not in plain.args  # the default trusts its source, as before
    with pytest.raises(TypeError, match="need safe=True"):
        FFmpegOpusProvider("http://example.com/a.mp3", allow_local_files=True)


def test_safe_mode_passes_a_protocol_whitelist_before_the_input():
    args = FFmpegOpusProvider("https://example.com/a.mp3", safe=True, before_options="-reconnect 1").args
    at = args.index("-protocol_whitelist")
    assert args[at + 1] == "http,https,tcp,tls" and at < args.index("-i") and args[args.index("-i") + 1] == (
        "https://example.com/a.mp3")
    local = FFmpegOpusProvider("/music/a.mp3", safe=True, allow_local_files=True).args
    assert local[local.index("-protocol_whitelist") + 1] == "http,https,tcp,tls,file"
    only = FFmpegOpusProvider("rtmp://example.com/live", safe=True, allowed_protocols=["rtmp"]).args
    assert only[only.index("-protocol_whitelist") + 1] == "rtmp,tcp,tls"
    with pytest.raises(ValueError, match="allow_local_files"):
        FFmpegOpusProvider("http://example.com/a.mp3", safe=True, allowed_protocols=["http", "file"])


@pytest.mark.parametrize("before, options", [
    ("-protocol_whitelist file,http", None),
    ("-f concat -safe 0", None),
    ("-i /etc/passwd", None),
    (None, "-i /etc/passwd"),
])
def test_safe_mode_refuses_options_that_change_what_ffmpeg_may_open(before, options):
    with pytest.raises(UnsafeSourceError, match="safe mode does not allow"):
        FFmpegOpusProvider("http://example.com/a.mp3", safe=True, before_options=before, options=options)


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "169.254.169.254", "10.1.2.3", "192.168.0.1", "localhost"])
async def test_a_host_that_is_not_public_is_refused_at_start(host):
    provider = FFmpegOpusProvider(f"http://{host}/latest/meta-data", safe=True)
    with pytest.raises(UnsafeSourceError, match="not a public address"):
        await provider.start()
    assert provider.process is None and isinstance(provider.error, UnsafeSourceError)
    await provider.aclose()


async def test_a_refused_host_also_ends_a_lazily_started_stream():
    provider = FFmpegOpusProvider("http://169.254.169.254/latest/meta-data", safe=True)
    frames, errors = await drain(provider, timeout=10)
    assert frames == [] and [type(e) for e in errors] == [UnsafeSourceError] and provider.process is None
    await provider.aclose()


# -- against real ffmpeg, over HTTP --------------------------------------------------------


async def test_a_plain_http_url_plays_in_safe_mode(http):
    async with FFmpegOpusProvider(f"{http}/song.mp3", safe=True, allow_private_hosts=True) as provider:
        frames, errors = await drain(provider)
    assert errors == [] and 45 <= len(frames) <= 60  # one second of 20 ms frames


@pytest.mark.parametrize("path, refusal", [
    ("/list.m3u8", "Protocol 'file' not on whitelist 'http,https,tcp,tls'"),
    ("/list.ffconcat", "Unsafe file name"),  # the concat demuxer's own -safe (which safe mode keeps on)
])
async def test_a_playlist_or_script_naming_a_local_file_is_refused_by_ffmpeg(http, path, refusal):
    async with FFmpegOpusProvider(f"{http}{path}", safe=True, allow_private_hosts=True) as provider:
        frames, errors = await drain(provider)
    assert frames == [] and errors and isinstance(errors[0], FFmpegError)
    assert any(refusal in line for line in provider.stderr_tail), provider.stderr_tail


async def test_without_safe_mode_a_local_file_plays(media):
    """What safe mode prevents: by default a path is just played."""
    async with FFmpegOpusProvider(str(media)) as provider:
        frames, errors = await drain(provider)
    assert errors == [] and len(frames) >= 45
    with pytest.raises(UnsafeSourceError, match="local path"):
        FFmpegOpusProvider(str(media), safe=True)
    async with FFmpegOpusProvider(str(media), safe=True, allow_local_files=True) as allowed:
        frames, errors = await drain(allowed)
    assert errors == [] and len(frames) >= 45
    await asyncio.sleep(0)
