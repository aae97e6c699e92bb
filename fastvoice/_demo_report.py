"""The demo's summary: per direction, what was sent, what arrived, where the rest was lost,
and what each process cost; then a verdict and the exit status."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

__all__ = ["OK", "LOST", "USAGE", "SERVER_DROPPED", "RECORDING_FAILED", "CallLoss", "Outcome", "account",
           "capacity_warning", "summarise"]

#: Exit statuses.
OK, LOST, USAGE, SERVER_DROPPED, RECORDING_FAILED = 0, 1, 2, 3, 4
#: A process whose event loop is busier than this share of its one core has no room left.
BUSY = 0.9


@dataclass
class CallLoss:
    """Where one call's packets went missing (counts of packets or frames)."""

    not_sent: int = 0  # frames the speaker never sent
    before_server: int = 0  # sent, never read by the test server
    after_server: int = 0  # read (and forwarded) by the server, never delivered to the listener
    changed: int = 0  # delivered with other bytes than were sent


def account(first: int, want: list[bytes], sent_count: int, at_server: int, heard_seqs: list[int],
            heard_frames: list[bytes]) -> CallLoss:
    """Compare what the speaker should send (``want``) and sent (``sent_count`` packets from
    sequence ``first`` on), how many of them the server read (``at_server``) and what the
    listener got (``heard_seqs`` / ``heard_frames``)."""
    sent = min(sent_count, len(want))
    sent_seqs = {(first + i) & 0xFFFF for i in range(sent)}
    heard = len(set(heard_seqs) & sent_seqs)
    at_server = min(at_server, sent)
    loss = CallLoss(not_sent=max(0, len(want) - sent_count), before_server=sent - at_server,
                    after_server=max(0, at_server - heard))
    for seq, frame in zip(heard_seqs, heard_frames):
        position = (seq - first) & 0xFFFF
        if position >= len(want) or want[position] != frame:
            loss.changed += 1
    return loss


def capacity_warning(calls: int, cores: dict[str, float], machine_cores: int) -> str | None:
    """Words for a run this machine cannot carry, from each process's measured share of a core
    (``cores``: name -> cores), or ``None`` when it fits."""
    total = sum(cores.values())
    busiest, share = max(cores.items(), key=lambda item: item[1])
    if share < BUSY and total < BUSY * machine_cores:
        return None
    scale = min(BUSY * 0.85 / max(share, 1e-9), BUSY * 0.85 * machine_cores / max(total, 1e-9))
    fits = max(1, int(calls * scale) // 50 * 50 or int(calls * scale))
    if share >= BUSY:
        why = (f"the {busiest} uses {share:.2f} of its one core (an event loop runs on one core, "
               f"so it falls behind)")
    else:
        why = f"the three processes use {total:.2f} of this machine's {machine_cores} cores"
    return textwrap.fill(
        f"This machine is too small for {calls} calls: {why}. Expect late ticks, delayed audio "
        f"and possibly lost packets; "
        f"about {fits} calls fit here.", width=92, initial_indent="  ", subsequent_indent="  ")


@dataclass
class Outcome:
    """Everything the summary reports (``None``: not known on this system)."""

    calls: int
    speakers_where: str
    sent: int = 0
    expected: int = 0
    deficit: int | None = 0
    tick_late: tuple[float | None, float | None] = (None, None)
    at_server: int = 0
    server_socket_drops: int | None = None
    server_buffer_kib: int = 0
    fault_drops: int = 0
    listener_socket_drops: int | None = None
    received: int = 0
    intact: int = 0
    jitter: tuple[float, float] = (float("nan"), float("nan"))
    loss: CallLoss = field(default_factory=CallLoss)
    wall: float = 0.0
    cpu: dict[str, float | None] = field(default_factory=dict)
    dave: bool = True
    plaintext: int = 0
    warning: str | None = None


def _cores(seconds: float | None, wall: float) -> str:
    return "-" if seconds is None else f"{seconds / wall:.2f}" if wall > 0 else "-"


def summarise(o: Outcome) -> int:
    """Print the summary table and the verdict; return the exit status."""
    loss = o.loss
    server_row = f"{o.at_server}"
    if o.server_socket_drops is not None:
        server_row += f" (its socket dropped {o.server_socket_drops}; receive buffer {o.server_buffer_kib} KiB)"
    elsewhere_before = loss.before_server - min(loss.before_server, o.server_socket_drops or 0)
    at_listeners = min(loss.after_server, o.listener_socket_drops or 0)
    to_faults = min(loss.after_server - at_listeners, o.fault_drops)
    elsewhere_after = loss.after_server - at_listeners - to_faults
    late50, late99 = o.tick_late
    late = "" if late99 is None else f"; send ticks late p50 {late50:.1f} / p99 {late99:.1f} ms"
    received_row = f"{o.received} of {o.expected * o.calls}"
    if o.listener_socket_drops is not None:
        received_row += f" (their sockets dropped {o.listener_socket_drops})"
    rows: list[tuple[str, str]] = [
        ("connections", f"{2 * o.calls}: {o.calls} speakers ({o.speakers_where}), {o.calls} listeners"),
        ("speakers -> test server", ""),
        ("  packets sent", f"{o.sent} (deficit {'-' if o.deficit is None else o.deficit} ticks{late})"),
        ("  read by the test server", server_row),
        ("  lost", f"{loss.before_server}: {loss.before_server - elsewhere_before} at the server's socket, "
                   f"{elsewhere_before} elsewhere"),
        ("test server -> listeners", ""),
        ("  frames received", received_row),
        ("  lost", f"{loss.after_server}: {at_listeners} at the listeners' sockets, {to_faults} to the "
                   f"server's fault knobs, {elsewhere_after} elsewhere"),
        ("  jitter p50 / p99", f"{o.jitter[0]:.2f} / {o.jitter[1]:.2f} ms (listeners' arrival intervals)"),
        ("  delivered changed", f"{loss.changed} frames"),
        ("calls received intact", f"{o.intact} of {o.calls}"),
        ("not sent by speakers", f"{loss.not_sent} frames"),
    ]
    rows += [(f"CPU, {name}", f"{_cores(seconds, o.wall)} cores" + ("" if seconds is None else f" ({seconds:.2f} s)"))
             for name, seconds in o.cpu.items()]
    rows += [("wall time", f"{o.wall:.1f} s"),
             ("DAVE", f"on, {o.plaintext} plaintext packets in E2EE calls" if o.dave else "off")]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key:<{width}}  {value}".rstrip())
    if o.intact == o.calls and o.plaintext == 0:
        print("\n  OK: every frame arrived, in order")
        return OK
    if o.warning is not None:
        print("\n" + o.warning)
    # Loss before the server is the server's own when its socket's drop counter covers it.
    server_dropped = loss.before_server and (o.server_socket_drops is None
                                             or o.server_socket_drops >= loss.before_server)
    if server_dropped and not (loss.not_sent or loss.after_server or loss.changed or o.plaintext):
        print("\n" + textwrap.fill(
            f"INCOMPLETE: the local test server did not read {loss.before_server} packets (its UDP socket "
            "overflowed while the server was busy); fastvoice delivered every packet the server "
            "forwarded. Run fewer calls (-n) to check every frame; see --help for this server's limit.",
            width=92, initial_indent="  ", subsequent_indent="  "))
        return SERVER_DROPPED
    causes = []
    if loss.not_sent:
        causes.append(f"{loss.not_sent} frames were never sent")
    if loss.before_server and not server_dropped:
        causes.append(f"{loss.before_server} packets were lost before the test server, more than its socket "
                      f"dropped ({o.server_socket_drops})")
    if loss.after_server:
        causes.append(f"{loss.after_server} packets were lost between the test server and the listeners")
    if loss.changed:
        causes.append(f"{loss.changed} frames arrived changed")
    if o.plaintext:
        causes.append(f"{o.plaintext} packets of DAVE calls were plaintext")
    if not causes:
        causes.append(f"{o.calls - o.intact} calls did not receive the whole clip in order")
    print("\n" + textwrap.fill("FAILED: " + "; ".join(causes), width=92, initial_indent="  ", subsequent_indent="  "))
    return LOST
