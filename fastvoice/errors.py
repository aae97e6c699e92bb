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


class GatewayDecodeError(VoiceError, ValueError):
    """A voice gateway frame could not be decoded: invalid JSON, or a known op whose payload is malformed.

    The message names the field and what was expected.  The gateway catches it,
    logs it and drops the frame.  ``seq`` is the frame's sequence number when it could
    be read before the payload failed (the gateway still acknowledges it), else ``None``.
    """

    seq: int | None = None


class GatewayClosedError(VoiceError):
    """The voice gateway closed for good: a close code it must not retry, or retries were used up.

    ``code`` is the close code (``None`` when the connection dropped without a close
    frame), ``close_event`` its :class:`fastvoice.close_codes.GatewayCloseEventCode`
    entry (description, explanation and behaviour), ``reason`` the close reason
    sent by the server, and ``attempts`` how many reconnect attempts were made.
    """

    def __init__(self, code: "int | None", close_event: object, reason: str = "", attempts: int = 0, detail: str = "") -> None:
        self.code = code
        self.close_event = close_event
        self.reason = reason
        self.attempts = attempts
        description = getattr(close_event, "description", "Unknown")
        explanation = getattr(close_event, "explanation", "")
        if code is None:
            text = "voice gateway connection failed or dropped without a close code."
        else:
            text = f"voice gateway closed with code {code} ({description}): {explanation}"
        if reason:
            text += f" Reason: {reason!r}."
        if detail:
            text += f" {detail}"
        super().__init__(text)


class GatewayTimeoutError(VoiceError, TimeoutError):
    """The voice gateway did not become ready (Ready or Resumed) within the configured timeout."""
