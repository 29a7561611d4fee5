# Empirical distributions: what was measured, kept so it can be sampled faithfully.
#
# Strategy: keep the sorted samples; above ``cap`` samples keep ``cap`` evenly spaced order
# statistics instead (a quantile summary that preserves the tails), plus the true count.
# ``quantile`` reports the samples' own percentiles (linear between order statistics, as
# numpy's default); draws use the same piecewise-linear inverse CDF, so sampling many times
# reproduces the captured p50/p95/p99.  Pure: the caller passes the random source.
#
# Ties.  What is kept are times, and times are continuous: equal samples come from the
# resolution of the stamps (a proxy's one read holding several answers, a log's millisecond
# stamps, order statistics read from one sketch bucket) or from a batch (requests read
# together, answered in one write), not from an atom of one request's delay, which is what
# a draw stands for.  The inverse CDF that draws sample (``inverse_cdf``) therefore puts each run
# of equal values at one knot, at the middle of its ranks (the minimum at rank 0 and the
# maximum at the last rank, so the range stays [min, max]), and interpolates linearly
# between knots: a draw never repeats a tied value exactly, where the plain order statistics
# would give it the weight of a step.  Without ties the knots are the order statistics
# themselves, and draws and reported percentiles are one curve; with ties they differ only
# between the neighbours of a tied run.  ``quantile`` stays the samples' percentile, so a
# summary of measured values (a diff's candidate p50) says what was measured.
#
# Bounded learning and merging.  A distribution of more than ``cap`` samples also carries a
# LogSketch (sketch.py) of them, so that models can be merged.  Accuracy, stated:
#   * up to ``cap`` (2,048) samples: the samples themselves, exact; merging two such
#     distributions whose counts add up to at most ``cap`` is exact;
#   * up to EXACT_LIMIT (50,000) samples seen by the learner (``Samples``): the 2,048 values
#     are the exact order statistics at ranks k/2047, as before: a quantile read back is the
#     exact one up to the interpolation between neighbouring ranks (1/2047 of the ranks);
#   * beyond that, and in every merge with more than ``cap`` samples in all: the same 2,048
#     ranks are read from the sketch, each within sketch.ALPHA (0.1 %) of the true order
#     statistic (relative), the minimum and maximum exact.  So a p50/p95/p99 (and every
#     draw of the engine, which samples the same inverse CDF) is within 0.1 % of the value
#     the exact summary gives.  Merging sketches adds bucket counts: order does not matter,
#     and merging equals importing at once whenever both go through the sketch.
from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cyncsim.replay.model.sketch import LogSketch

__all__ = ["DEFAULT_CAP", "EXACT_LIMIT", "Distribution", "Samples", "StratifiedUniform",
           "sorted_quantile", "tie_knots"]  # fmt: skip

DEFAULT_CAP = 2048
EXACT_LIMIT = 50_000  # samples a learner keeps exactly per distribution before sketching


@dataclass(frozen=True, slots=True)
class Distribution:
    """Sorted samples (seconds, or any unit) and how many were measured."""

    values: tuple[float, ...] = ()
    count: int = 0
    method: str = "measured"  # measured | aggregate | default
    dropped: int = 0  # measurements left out as ambiguous
    sketch: LogSketch | None = field(default=None, repr=False)  # when count > len(values)
    # (ranks, values) of the inverse CDF's knots when ``values`` has ties, else None
    _knots: tuple[tuple[float, ...], tuple[float, ...]] | None = field(
        default=None, init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_knots", tie_knots(self.values))

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
        # Rounding to the nanosecond keeps model files byte-identical across platforms.
        if n <= cap:
            return cls(tuple(round(v, 9) for v in vals), n, method, dropped)
        picked = tuple(round(sorted_quantile(vals, i / (cap - 1)), 9) for i in range(cap))
        return cls(picked, n, method, dropped, sketch=LogSketch.of(_rounded(vals)))

    @classmethod
    def from_sketch(
        cls, sketch: LogSketch, *, cap: int = DEFAULT_CAP, method: str = "measured",
        dropped: int = 0,
    ) -> Distribution:  # fmt: skip
        """``cap`` quantiles read from a sketch of more than ``cap`` samples."""
        if sketch.count <= cap:
            raise ValueError(f"a sketch of {sketch.count} samples: keep them exactly")
        vals = tuple(round(v, 9) for v in sketch.quantiles(cap))
        return cls(vals, sketch.count, method, dropped, sketch=sketch)

    @property
    def exact(self) -> bool:
        """True when ``values`` are all the samples."""
        return len(self.values) == self.count and self.sketch is None

    def to_sketch(self) -> LogSketch:
        """A sketch of the samples (a copy of the kept one, or built from the values).

        A distribution of a file written before sketches existed (more samples than values,
        no sketch) spreads its count over its evenly spaced quantiles.
        """
        if self.sketch is not None:
            return self.sketch.copy()
        n, m = self.count, len(self.values)
        if m in (n, 0):
            return LogSketch.of(self.values)
        weights = [(k + 1) * n // m - k * n // m for k in range(m)]
        return LogSketch.of(self.values, weights)

    def merge(self, other: Distribution, *, cap: int = DEFAULT_CAP) -> Distribution:
        """Both distributions as one, as if their samples had been measured together.

        Exact while the samples of both are kept and add up to at most ``cap``; otherwise
        the sum of both sketches (see the module comment for the accuracy).  Commutative,
        and associative: merging in any order gives the same distribution.
        """
        method = self.method if self.method == other.method else "merged"
        dropped = self.dropped + other.dropped
        if not other.count or not self.count:
            keep = self if self.count else other
            return Distribution(keep.values, keep.count, method if keep.count else keep.method,
                                dropped, sketch=keep.sketch)  # fmt: skip
        if self.exact and other.exact and self.count + other.count <= cap:
            return Distribution.from_samples(
                self.values + other.values, cap=cap, method=method, dropped=dropped
            )
        sk = self.to_sketch()
        sk.merge(other.to_sketch() if other.sketch is None else other.sketch)
        return Distribution.from_sketch(sk, cap=cap, method=method, dropped=dropped)

    @classmethod
    def constant(cls, value: float, *, method: str = "default") -> Distribution:
        return cls((float(value),), 1, method)

    def __bool__(self) -> bool:
        return bool(self.values)

    def quantile(self, q: float) -> float:
        """Percentile ``q`` (0-1) of the samples kept (linear between order statistics)."""
        if not self.values:
            raise ValueError("empty distribution")
        return sorted_quantile(self.values, min(max(q, 0.0), 1.0))

    def inverse_cdf(self, q: float) -> float:
        """The value a draw of ``q`` (0-1) gives: ``quantile``, with tied runs spread."""
        if not self.values:
            raise ValueError("empty distribution")
        return self._at(min(max(q, 0.0), 1.0))

    def _at(self, q: float) -> float:
        knots = self._knots
        return sorted_quantile(self.values, q) if knots is None else _knot_quantile(knots, q)

    @property
    def p50(self) -> float:
        return self.quantile(0.5)

    def sample(self, rng: random.Random | StratifiedUniform) -> float:
        """One draw by inverse CDF; pass a StratifiedUniform for low-variance tails."""
        if len(self.values) == 1:
            return self.values[0]  # no draw taken: a constant leaves the stream as it is
        return self._at(rng.random())

    def knots(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``inverse_cdf`` as (positions 0-1, values): linear between them."""
        vals = self.values
        if self._knots is not None:
            ranks, at = self._knots
            return tuple(r / (len(vals) - 1) for r in ranks), at
        if len(vals) == 1:
            return (0.0, 1.0), (vals[0], vals[0])
        return tuple(i / (len(vals) - 1) for i in range(len(vals))), vals

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
        obj: dict[str, object] = {
            "values": list(self.values),
            "count": self.count,
            "method": self.method,
            "dropped": self.dropped,
        }
        if self.sketch is not None:
            obj["sketch"] = self.sketch.to_obj()
        return obj

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
        sk = obj.get("sketch")
        sketch = None
        if sk is not None:
            if not isinstance(sk, dict) or not vals:
                raise ValueError("distribution sketch of the wrong type")
            sketch = LogSketch.from_obj(sk, float(vals[0]), float(vals[-1]))
            if sketch.count != count:
                raise ValueError(f"distribution sketch of {sketch.count} samples, count {count}")
        return cls(tuple(float(v) for v in vals), count, method, dropped, sketch=sketch)


class Samples:
    """What a learner keeps of one distribution while it reads: bounded, mergeable.

    The samples themselves up to ``limit`` (EXACT_LIMIT), a LogSketch beyond; ``build``
    gives the Distribution (the same as ``Distribution.from_samples`` of every sample while
    they are kept).  ``values`` is also the buffer a hot loop may append to directly
    (``values.append``, no call into this class), provided it calls ``spill()`` now and then
    (the importer does once per chunk): between spills the buffer holds at most the samples
    of one chunk beyond the limit, and ``build`` spills first, so the result is the same.
    """

    __slots__ = ("limit", "sketch", "values")

    def __init__(self, limit: int = EXACT_LIMIT) -> None:
        self.limit = max(limit, DEFAULT_CAP)  # a sketch is read back only above the cap
        self.values: list[float] = []  # exact samples, or (once sketched) not folded in yet
        self.sketch: LogSketch | None = None

    def __len__(self) -> int:
        return len(self.values) + (self.sketch.count if self.sketch is not None else 0)

    def add(self, v: float) -> None:
        vals = self.values
        vals.append(v)
        if self.sketch is not None or len(vals) > self.limit:
            self.spill()

    def spill(self) -> None:
        """Fold the buffered samples into the sketch once there are more than ``limit``."""
        vals = self.values
        if not vals or (self.sketch is None and len(vals) <= self.limit):
            return
        add = LogSketch.of(_rounded(vals))
        if self.sketch is None:
            self.sketch = add
        else:
            self.sketch.merge(add)
        self.values = []

    def merge(self, other: Samples) -> None:
        self.values.extend(other.values)
        if other.sketch is not None:
            if self.sketch is None:
                self.sketch = other.sketch.copy()
            else:
                self.sketch.merge(other.sketch)
        self.spill()

    def build(self, *, method: str = "measured", dropped: int = 0) -> Distribution:
        self.spill()
        if self.sketch is None:
            return Distribution.from_samples(self.values, method=method, dropped=dropped)
        return Distribution.from_sketch(self.sketch.copy(), method=method, dropped=dropped)


def _rounded(vals: list[float]) -> list[float]:
    return [round(x, 9) for x in vals]


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


def tie_knots(vals: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The knots (ranks, values) of the inverse CDF of sorted ``vals`` that has ties: each
    run of equal values at the middle of its ranks, the first and last runs at the ends;
    None without ties (the order statistics are the knots)."""
    n = len(vals)
    if n < 2 or all(a != b for a, b in itertools.pairwise(vals)):
        return None
    ranks: list[float] = []
    at: list[float] = []
    i = 0
    while i < n:
        j = i
        while j + 1 < n and vals[j + 1] == vals[i]:
            j += 1
        ranks.append(0.0 if i == 0 else float(n - 1) if j == n - 1 else (i + j) / 2)
        at.append(vals[i])
        i = j + 1
    if len(at) == 1:
        ranks.append(float(n - 1))
        at.append(vals[0])
    return tuple(ranks), tuple(at)


def _knot_quantile(knots: tuple[tuple[float, ...], tuple[float, ...]], q: float) -> float:
    ranks, at = knots
    pos = q * ranks[-1]
    k = bisect.bisect_right(ranks, pos)
    if k >= len(ranks):
        return at[-1]
    lo = ranks[k - 1]
    return at[k - 1] + (at[k] - at[k - 1]) * (pos - lo) / (ranks[k] - lo)


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
