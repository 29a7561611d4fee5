# Empirical distributions: what was measured, kept so it can be sampled faithfully.
#
# Strategy: keep the sorted samples; above ``cap`` samples keep ``cap`` evenly spaced order
# statistics instead (a quantile sketch that preserves the tails), plus the true count.
# Quantiles and sampling both use the same piecewise-linear inverse CDF, so sampling many
# times reproduces the captured p50/p95/p99.  Pure: the caller passes the random source.
from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["Distribution", "StratifiedUniform", "sorted_quantile"]

DEFAULT_CAP = 2048


@dataclass(frozen=True, slots=True)
class Distribution:
    """Sorted samples (seconds, or any unit) and how many were measured."""

    values: tuple[float, ...] = ()
    count: int = 0
    method: str = "measured"  # measured | aggregate | default
    dropped: int = 0  # measurements left out as ambiguous
    _cache: dict[str, float] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_samples(
        cls,
        samples: Iterable[float],
        *,
        cap: int = DEFAULT_CAP,
        method: str = "measured",
        dropped: int = 0,
    ) -> Distribution:
        vals = sorted(float(s) for s in samples)
        n = len(vals)
        if n > cap:
            vals = [sorted_quantile(vals, i / (cap - 1)) for i in range(cap)]
        # Rounding to the nanosecond keeps model files byte-identical across platforms.
        return cls(tuple(round(v, 9) for v in vals), n, method, dropped)

    @classmethod
    def constant(cls, value: float, *, method: str = "default") -> Distribution:
        return cls((float(value),), 1, method)

    def __bool__(self) -> bool:
        return bool(self.values)

    def quantile(self, q: float) -> float:
        if not self.values:
            raise ValueError("empty distribution")
        return sorted_quantile(self.values, min(max(q, 0.0), 1.0))

    @property
    def p50(self) -> float:
        return self.quantile(0.5)

    def sample(self, rng: random.Random | StratifiedUniform) -> float:
        """One draw by inverse CDF; pass a StratifiedUniform for low-variance tails."""
        if len(self.values) == 1:
            return self.values[0]  # no draw taken: a constant leaves the stream as it is
        return sorted_quantile(self.values, rng.random())

    def cdf(self, x: float) -> float:
        """Fraction of the distribution at or below ``x`` (for KS statistics)."""
        vals = self.values
        if not vals:
            return 0.0
        return bisect.bisect_right(vals, x) / len(vals)

    def scaled(self, factor: float) -> Distribution:
        return Distribution(tuple(v * factor for v in self.values), self.count, self.method)

    def summary(self, unit_scale: float = 1.0, digits: int = 1) -> dict[str, float | int]:
        if not self.values:
            return {"samples": self.count}
        return {
            "p50": round(self.quantile(0.5) * unit_scale, digits),
            "p95": round(self.quantile(0.95) * unit_scale, digits),
            "p99": round(self.quantile(0.99) * unit_scale, digits),
            "samples": self.count,
        }

    def to_obj(self) -> dict[str, object]:
        return {
            "values": list(self.values),
            "count": self.count,
            "method": self.method,
            "dropped": self.dropped,
        }

    @classmethod
    def from_obj(cls, obj: dict[str, object]) -> Distribution:
        vals = obj["values"]
        if not isinstance(vals, list | tuple) or not all(isinstance(v, int | float) for v in vals):
            raise ValueError("distribution values must be a list of numbers")
        count, method, dropped = obj["count"], obj["method"], obj.get("dropped", 0)
        if not isinstance(count, int) or not isinstance(method, str):
            raise ValueError("distribution count/method of the wrong type")
        if not isinstance(dropped, int):
            raise ValueError("distribution dropped count of the wrong type")
        if any(b < a for a, b in itertools.pairwise(vals)) or any(math.isnan(v) for v in vals):
            raise ValueError("distribution values are not sorted numbers")
        return cls(tuple(float(v) for v in vals), count, method, dropped)


def sorted_quantile(vals: Sequence[float], q: float) -> float:
    """Quantile ``q`` (0-1) of the sorted ``vals``: linear interpolation between order
    statistics (numpy's default 'linear' method)."""
    n = len(vals)
    if n == 1:
        return vals[0]
    pos = q * (n - 1)
    lo = int(pos)
    if lo >= n - 1:
        return vals[-1]
    frac = pos - lo
    return vals[lo] + (vals[lo + 1] - vals[lo]) * frac


class StratifiedUniform:
    """Uniform draws in [0, 1) that cover the unit interval evenly, block by block.

    Each block of ``strata`` draws takes exactly one value from each of ``strata`` equal
    slices, in a random order, so any run of a few thousand draws already has the right p99:
    plain random draws miss tail quantiles by several percent at 10,000 samples.  Each draw
    on its own is still uniform, and the order is random (seeded by ``rng``).
    """

    __slots__ = ("_i", "_perm", "_rng", "strata")

    def __init__(self, rng: random.Random, strata: int = 1000) -> None:
        self._rng = rng
        self.strata = strata
        self._perm: list[int] = []
        self._i = 0

    def random(self) -> float:
        if self._i >= len(self._perm):
            self._perm = list(range(self.strata))
            self._rng.shuffle(self._perm)
            self._i = 0
        k = self._perm[self._i]
        self._i += 1
        return (k + self._rng.random()) / self.strata
