"""A fixed-bucket histogram of seconds (the send clock's tick lateness, for metrics)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["Histogram", "TICK_LATENESS_BUCKETS"]

#: Upper bounds (seconds) of the tick-lateness buckets: from 0.1 ms to a whole 20 ms tick and
#: beyond; a tick later than the last bound falls in the overflow bucket (``+Inf``).
TICK_LATENESS_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1,
)


class Histogram:
    """Counts observations into fixed buckets, as Prometheus histograms do.

    ``bounds`` are the buckets' upper bounds, increasing; a value ``v`` falls in the first
    bucket whose bound is ``>= v``, or in the overflow bucket after the last one. Negative
    values count as 0. ``counts`` holds one count per bucket (not cumulative) plus the
    overflow bucket; ``count`` and ``sum`` are the number and total of all observations.
    """

    __slots__ = ("bounds", "counts", "count", "sum")

    def __init__(self, bounds: Sequence[float] = TICK_LATENESS_BUCKETS) -> None:
        values = tuple(float(b) for b in bounds)
        if not values or any(b <= a for a, b in zip(values, values[1:])) or values[0] < 0:
            raise ValueError(f"bounds must be increasing numbers >= 0, got {tuple(bounds)!r}"[:160])
        self.bounds = values
        self.counts = [0] * (len(values) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation of ``value`` seconds."""
        if value < 0:
            value = 0.0
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` per bucket, the last bound ``inf``."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            total += n
            out.append((bound, total))
        return out

    def copy(self) -> Histogram:
        """An independent copy (a snapshot's)."""
        twin = Histogram(self.bounds)
        twin.counts = list(self.counts)
        twin.count, twin.sum = self.count, self.sum
        return twin

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, sum={self.sum:.6f})"
