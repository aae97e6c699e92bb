"""Transport encryption modes and how a client picks one (PROTOCOL.md section 3)."""

from __future__ import annotations

import enum
from collections.abc import Iterable

from ._cpu import aes256gcm_available
from ._shown import cut, shown

__all__ = ["EncryptionMode", "choose_encryption_mode", "AVAILABLE_MODES", "DISCONTINUED_MODES"]


class EncryptionMode(str, enum.Enum):
    """An RTP transport encryption mode, as named on the voice gateway.

    The seed's three names (``NORMAL``, ``SUFFIX``, ``LITE``) are aliases of the
    ``XSALSA20_POLY1305*`` members.  Only the two ``_rtpsize`` AEAD modes still
    connect to Discord; the others were discontinued on 2024-11-18.
    """

    AEAD_AES256_GCM_RTPSIZE = "aead_aes256_gcm_rtpsize"
    AEAD_XCHACHA20_POLY1305_RTPSIZE = "aead_xchacha20_poly1305_rtpsize"
    XSALSA20_POLY1305 = "xsalsa20_poly1305"
    XSALSA20_POLY1305_SUFFIX = "xsalsa20_poly1305_suffix"
    XSALSA20_POLY1305_LITE = "xsalsa20_poly1305_lite"
    XSALSA20_POLY1305_LITE_RTPSIZE = "xsalsa20_poly1305_lite_rtpsize"
    AEAD_AES256_GCM = "aead_aes256_gcm"

    # The seed's names for its three modes.
    NORMAL = "xsalsa20_poly1305"
    SUFFIX = "xsalsa20_poly1305_suffix"
    LITE = "xsalsa20_poly1305_lite"

    def __str__(self) -> str:
        return self.value

    @property
    def discontinued(self) -> bool:
        """True for the modes Discord no longer accepts."""
        return self in DISCONTINUED_MODES

    @classmethod
    def parse(cls, value: object) -> "EncryptionMode":
        """Return the member for ``value`` (a member or its wire name).

        Raises ``ValueError`` naming the value and the known modes otherwise.
        """
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown encryption mode {shown(value)}; expected one of: {known}") from None


#: Modes Discord still accepts, in order of preference.
AVAILABLE_MODES: tuple[EncryptionMode, ...] = (
    EncryptionMode.AEAD_AES256_GCM_RTPSIZE,
    EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE,
)

#: Modes discontinued by Discord on 2024-11-18 (connecting with them fails).
DISCONTINUED_MODES: frozenset[EncryptionMode] = frozenset(
    {
        EncryptionMode.XSALSA20_POLY1305,
        EncryptionMode.XSALSA20_POLY1305_SUFFIX,
        EncryptionMode.XSALSA20_POLY1305_LITE,
        EncryptionMode.XSALSA20_POLY1305_LITE_RTPSIZE,
        EncryptionMode.AEAD_AES256_GCM,
    }
)

# A server may offer any number of names: the error shows the first few, bounded.
_NAMES_SHOWN = 5
_MODE_TEXT = 60

# Discontinued modes the packet core can still speak, best first (seed compatibility).
_LEGACY_PREFERENCE: tuple[EncryptionMode, ...] = (
    EncryptionMode.XSALSA20_POLY1305_LITE,
    EncryptionMode.XSALSA20_POLY1305_SUFFIX,
    EncryptionMode.XSALSA20_POLY1305,
)


def choose_encryption_mode(
    offered: Iterable[str],
    *,
    allow_discontinued: bool = False,
    aes_gcm_available: bool | None = None,
) -> EncryptionMode:
    """Pick the transport encryption mode for a connection from the server's ``modes``.

    AES-256-GCM (``aead_aes256_gcm_rtpsize``) when offered and this CPU supports it
    (libsodium's ``crypto_aead_aes256gcm_is_available()``), else XChaCha20-Poly1305.
    Discontinued modes are only chosen with ``allow_discontinued=True`` and only when
    neither AEAD mode is offered.  Unknown names in ``offered`` are ignored.

    ``aes_gcm_available`` overrides the CPU check (tests, or to force XChaCha20).

    Raises ``ValueError`` naming what was offered (the first names, the count, cut to a bounded
    length) when no usable mode is among them.
    """
    if isinstance(offered, (str, bytes)):
        raise TypeError(f"offered must be an iterable of mode names, not {type(offered).__name__}")
    offered_list = list(offered)
    names = {str(m.value if isinstance(m, EncryptionMode) else m) for m in offered_list}
    if aes_gcm_available is None:
        aes_gcm_available = aes256gcm_available()
    if aes_gcm_available and EncryptionMode.AEAD_AES256_GCM_RTPSIZE.value in names:
        return EncryptionMode.AEAD_AES256_GCM_RTPSIZE
    if EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE.value in names:
        return EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE
    if allow_discontinued:
        for mode in _LEGACY_PREFERENCE:
            if mode.value in names:
                return mode
    first = sorted(names)[:_NAMES_SHOWN]
    offered_text = cut(", ".join(shown(name) for name in first) + (", ..." if len(names) > len(first) else ""),
                       2 * _MODE_TEXT)
    raise ValueError(
        f"no supported encryption mode among the {len(names)} offered ({offered_text}); expected "
        f"'aead_xchacha20_poly1305_rtpsize' or 'aead_aes256_gcm_rtpsize'"
        + ("" if allow_discontinued else " (discontinued modes need allow_discontinued=True)")
    )
