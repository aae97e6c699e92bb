"""The counters of a DAVE session."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DaveStats"]


@dataclass(slots=True)
class DaveStats:
    """Counters of one :class:`DaveSession` (all monotonic)."""

    #: Opus frames DAVE-encrypted for sending.
    frames_encrypted: int = 0
    #: Frames held back because E2EE was required and the session was not ready (or encryption failed).
    frames_held: int = 0
    #: Frames sent as they were because the call is at protocol 0.
    frames_passed_through: int = 0
    #: Received frames decrypted (or let through by a passthrough window).
    frames_decrypted: int = 0
    #: Received plaintext frames accepted because the call is at protocol 0.
    frames_received_plain: int = 0
    #: Received frames dropped because they could not be decrypted.
    decrypt_failures: int = 0
    #: Key packages sent (op 26).
    key_packages_sent: int = 0
    #: Commits sent (op 28).
    commits_sent: int = 0
    #: Commits and welcomes that could not be processed (each answered with op 31).
    invalid_commits: int = 0
    #: Server messages that were ignored because they could not be used.
    ignored_messages: int = 0
    #: Transitions executed.
    transitions_executed: int = 0
    #: Received frames held because no key decrypted them yet (a new member, a new epoch).
    early_frames_held: int = 0
    #: Held frames decrypted and delivered once their key arrived.
    early_frames_decrypted: int = 0
    #: Held frames whose key did not come in time (also counted in ``decrypt_failures``).
    early_frames_dropped: int = 0
    #: Recoveries after a run of undecryptable frames: op 31 sent and the session re-initialised.
    recoveries: int = 0
    #: Times recovery was given up after ``max_recoveries`` attempts in a row.
    recoveries_abandoned: int = 0
    #: Execute Transitions (op 22) that came before this client had prepared the transition.
    early_executes: int = 0
