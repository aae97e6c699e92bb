"""Safe mode of :class:`fastvoice.FFmpegOpusProvider`: what an untrusted source may make ffmpeg open.

A bot that plays ``!play <url>`` from any user hands that text to ffmpeg, which opens far more
than web URLs: local files (``/etc/passwd``, ``file:``), other files through its own protocols
(``concat:``, ``subfile:``, ``data:``, ``pipe:``...), and, through playlists (HLS) and
concatenation scripts, whatever those name. Safe mode checks the source before ffmpeg starts
and passes ffmpeg a protocol allow-list (``-protocol_whitelist``) that also binds every
nested open a playlist or a script makes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from ._shown import shown
from .errors import VoiceError

__all__ = ["UnsafeSourceError", "SafeSourcePolicy"]

#: Source protocols safe mode allows by default.
DEFAULT_PROTOCOLS = ("http", "https")
# What the allowed protocols need underneath (https is tls over tcp); never a source's own protocol.
_TRANSPORTS = ("tcp", "tls")
# ffmpeg's own rule for the protocol part of a URL: these characters, then ':'.
_SCHEME = re.compile(r"[A-Za-z0-9+.\-]*")
# Input options safe mode owns, or that would open another input it does not check.
_REFUSED_OPTIONS = frozenset({"-i", "-protocol_whitelist", "-protocol_blacklist", "-safe", "-f"})


class UnsafeSourceError(VoiceError, ValueError):
    """Safe mode refused a source (or an option): the message names what and why."""


def source_protocol(source: str) -> str | None:
    """The ffmpeg protocol ``source`` names (lower case), or ``None`` for a local path.

    Follows ffmpeg's parser: a prefix of letters, digits, ``+ - .`` ended by ``:``, and
    ``subfile,options:``; a drive letter (``C:``) is a path.
    """
    if source.startswith("subfile,") and ":" in source:
        return "subfile"
    name = _SCHEME.match(source)
    end = name.end() if name is not None else 0
    if 0 < end < len(source) and source[end] == ":":
        if end == 1 and source[0].isalpha():
            return None  # a DOS path: C:\music.mp3
        return source[:end].lower()
    return None


class SafeSourcePolicy:
    """What safe mode allows: source protocols, local files, private hosts."""

    def __init__(
        self,
        allowed_protocols: Iterable[str] | None = None,
        allow_local_files: bool = False,
        allow_private_hosts: bool = False,
    ) -> None:
        protocols = DEFAULT_PROTOCOLS if allowed_protocols is None else allowed_protocols
        if isinstance(protocols, (str, bytes)):
            raise TypeError("allowed_protocols must be a collection of protocol names, not a string")
        names = []
        for name in protocols:
            if not isinstance(name, str) or not _SCHEME.fullmatch(name) or not name or name.lower() == "file":
                raise ValueError(
                    f"allowed_protocols holds {shown(name)}: expected ffmpeg protocol names such as 'http'"
                    " (local files are allowed with allow_local_files=True)"
                )
            names.append(name.lower())
        self.protocols = tuple(dict.fromkeys(names))
        self.allow_local_files = bool(allow_local_files)
        self.allow_private_hosts = bool(allow_private_hosts)

    def whitelist(self) -> str:
        """The ``-protocol_whitelist`` value: the allowed protocols and what they run on."""
        names = list(self.protocols) + [t for t in _TRANSPORTS if t not in self.protocols]
        if self.allow_local_files:
            names.append("file")
        return ",".join(names)

    def check_source(self, source: str) -> None:
        """Refuse, before ffmpeg starts, a source of a protocol not allowed or a local path."""
        if not source or source.strip() != source or any(c in source for c in "\r\n\0"):
            raise UnsafeSourceError(f"source {shown(source)} is empty or holds control characters or edge spaces")
        protocol = source_protocol(source)
        if protocol is None:
            if source == "-" or not self.allow_local_files:
                raise UnsafeSourceError(
                    f"source {shown(source)} is a local path; safe mode plays only "
                    f"{'/'.join(self.protocols)} URLs (allow_local_files=True allows local files)"
                )
            return
        if protocol == "file" and self.allow_local_files:
            return
        if protocol not in self.protocols:
            raise UnsafeSourceError(
                f"source {shown(source)} uses the {shown(protocol)} protocol; safe mode allows "
                f"{', '.join(self.protocols)}"
            )
        try:
            host = urlsplit(source).hostname
        except ValueError:
            host = None
        if not source[len(protocol) + 1:].startswith("//") or not host:
            raise UnsafeSourceError(f"source {shown(source)} is not a URL of the form {protocol}://host/...")

    def check_options(self, options: Sequence[str], where: str) -> None:
        """Refuse options that would change what ffmpeg may open (they are safe mode's)."""
        for option in options:
            if option in _REFUSED_OPTIONS and (option != "-f" or where == "before_options"):
                raise UnsafeSourceError(
                    f"{where} holds {option}, which safe mode does not allow (it sets what ffmpeg may open)"
                )

    async def check_host(self, source: str) -> None:
        """Refuse a URL whose host is, or resolves to, an address that is not public
        (loopback, private, link-local such as cloud metadata at 169.254.169.254...)."""
        if self.allow_private_hosts or "://" not in source:
            return
        parts = urlsplit(source)
        host = parts.hostname
        if host is None:
            return
        try:
            port = parts.port
        except ValueError:
            raise UnsafeSourceError(f"source {shown(source)} has an invalid port") from None
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise UnsafeSourceError(f"source host {shown(host)} does not resolve: {exc}") from None
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        for address in addresses:
            if not address.is_global:
                raise UnsafeSourceError(
                    f"source host {shown(host)} is {address}, not a public address; safe mode refuses it "
                    "(allow_private_hosts=True allows it)"
                )
