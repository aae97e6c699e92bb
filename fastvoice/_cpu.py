"""What this CPU lets libsodium do: the one feature check the packet core and mode choice share.

A leaf module (it imports only PyNaCl), so that ``fastvoice.encryption`` can ask without
importing the packet core.
"""

from __future__ import annotations

import nacl._sodium as _sodium

__all__ = ["aes256gcm_available"]

# sodium_init() detects the CPU's features; it is idempotent and cheap after the first call.
_sodium.lib.sodium_init()


def aes256gcm_available() -> bool:
    """True when libsodium can use AES-256-GCM on this CPU (AES-NI/PCLMUL or ARMv8 crypto)."""
    return bool(_sodium.lib.crypto_aead_aes256gcm_is_available())
