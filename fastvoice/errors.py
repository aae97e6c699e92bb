"""Exceptions raised by fastvoice (the seed's ``Err*`` values, as exception types)."""

from __future__ import annotations


class VoiceError(Exception):
    """Base class of every exception fastvoice raises on purpose."""


class DecryptionFailedError(VoiceError):
    """A voice packet could not be decrypted (seed: ``ErrDecryptionFailed``).

    Raised for forged, truncated or wrongly keyed packets, and for packets whose
    authenticated contents are inconsistent (an extension or padding longer than
    the packet).
    """

    def __init__(self, reason: str = "decryption failed") -> None:
        super().__init__(reason)


class IPDiscoveryError(VoiceError):
    """An IP discovery reply was malformed, for another SSRC, or never came."""


class GatewayNotConnectedError(VoiceError):
    """A message was sent while the voice gateway is not connected (seed: ``ErrGatewayNotConnected``)."""

    def __init__(self, message: str = "voice gateway not connected") -> None:
        super().__init__(message)


class GatewayAlreadyConnectedError(VoiceError):
    """``open()`` was called on a gateway that is already connected (seed: ``ErrGatewayAlreadyConnected``)."""

    def __init__(self, message: str = "voice gateway already connected") -> None:
        super().__init__(message)
