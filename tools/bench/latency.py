# Latency statistics for the simulator suites: percentiles, KS statistics, the learned
# distributions as the simulator samples them.
#
# Strategy: everything here is pure arithmetic on lists of seconds.  Percentiles use linear
# interpolation between order statistics (numpy's default), the rule replay.model.Distribution
# uses, so a measured p99 and a learned p99 are computed alike.  The simulator draws a delay
# through the Distribution's piecewise-linear inverse CDF, so the KS statistic that says
# whether it reproduces the learned timing compares the measured samples with that
# piecewise-linear CDF (``ks_statistic``); ``ks_two_sample`` compares them with the stored
# values taken as a sample (a step CDF), which a distribution of few values can never match
# closely (14 stored values: steps of 1/14).
from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

from cyncsim.replay.model import DeviceModel, Distribution
from cyncsim.replay.model.dist import sorted_quantile

__all__ = [
    "cdf_interp",
    "cloud_variant_model",
    "ks_median",
    "ks_statistic",
    "ks_two_sample",
    "learned_summary",
    "percentile",
    "rate",
    "summary_ms",
]


def percentile(values: Sequence[float], q: float) -> float:
    """Quantile ``q`` (0-1) of ``values`` by linear interpolation; NaN when empty."""
    if not values:
        return math.nan
    return sorted_quantile(sorted(values), min(max(q, 0.0), 1.0))


def summary_ms(samples: Iterable[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean of ``samples`` (seconds) in milliseconds (NaN when empty)."""
    vals = sorted(samples)
    if not vals:
        return dict.fromkeys(("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms"), math.nan)
    return {
        "p50_ms": sorted_quantile(vals, 0.50) * 1e3,
        "p95_ms": sorted_quantile(vals, 0.95) * 1e3,
        "p99_ms": sorted_quantile(vals, 0.99) * 1e3,
        "max_ms": vals[-1] * 1e3,
        "mean_ms": sum(vals) / len(vals) * 1e3,
    }


def learned_summary(dist: Distribution, scale: float = 1.0) -> dict[str, float]:
    """The same figures for a learned distribution (times ``scale``), in milliseconds."""
    vals = dist.values
    mean = sum(vals) / len(vals) if vals else math.nan
    return {
        "learned_p50_ms": dist.quantile(0.50) * scale * 1e3,
        "learned_p95_ms": dist.quantile(0.95) * scale * 1e3,
        "learned_p99_ms": dist.quantile(0.99) * scale * 1e3,
        "learned_max_ms": vals[-1] * scale * 1e3,
        "learned_mean_ms": mean * scale * 1e3,
    }


def _cdf(vals: Sequence[float], x: float, *, left: bool) -> float:
    """Piecewise-linear CDF of sorted ``vals`` (the inverse of Distribution's quantile) at
    ``x``; ``left`` gives the limit from the left (it differs where values repeat)."""
    n = len(vals)
    if n == 1:
        return float(x > vals[0]) if left else float(x >= vals[0])
    j = bisect.bisect_left(vals, x) if left else bisect.bisect_right(vals, x)
    if j == 0:
        return 0.0
    if j >= n:
        return 1.0
    lo, hi = vals[j - 1], vals[j]
    # left: vals[j-1] < x <= vals[j]; right: vals[j-1] <= x < vals[j]; both: lo < hi
    return (j - 1 + (x - lo) / (hi - lo)) / (n - 1)


def cdf_interp(dist: Distribution, x: float, scale: float = 1.0) -> float:
    """P(delay <= x) for a delay drawn as the simulator draws it: ``dist`` times ``scale``."""
    if not dist.values:
        raise ValueError("empty distribution")
    vals = [v * scale for v in dist.values]
    return _cdf(vals, x, left=False)


def ks_statistic(samples: Sequence[float], dist: Distribution, scale: float = 1.0) -> float:
    """sup |F_measured - F_learned|, F_learned the piecewise-linear CDF the simulator samples.

    Exact for a CDF with jumps (repeated values): both one-sided limits are compared at every
    sample, which covers every extreme of the difference of two monotone step/linear curves.
    """
    if not samples:
        return math.nan
    if not dist.values:
        raise ValueError("empty distribution")
    vals = [v * scale for v in dist.values]
    xs = sorted(samples)
    m = len(xs)
    d = 0.0
    i = 0
    while i < m:
        x = xs[i]
        j = bisect.bisect_right(xs, x, lo=i)
        d = max(
            d,
            abs(j / m - _cdf(vals, x, left=False)),
            abs(i / m - _cdf(vals, x, left=True)),
        )
        i = j
    return d


def ks_median(n: int) -> float:
    """The median KS statistic of ``n`` independent draws from the distribution itself:
    Kolmogorov's limit (0.8276 / sqrt(n)) with Stephens' finite-n correction, within 1% of
    the exact value from n = 10 on (scipy.stats.kstwo would import 600 modules, which every
    later garbage collection in the process would have to walk)."""
    if n < 1:
        return math.nan
    root = math.sqrt(n)
    return 0.8276 / (root + 0.12 + 0.11 / root)


def ks_two_sample(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample KS statistic: sup |ECDF_a - ECDF_b| (NaN when either is empty)."""
    if not a or not b:
        return math.nan
    xa, xb = sorted(a), sorted(b)
    na, nb = len(xa), len(xb)
    d = 0.0
    for x in sorted(set(xa) | set(xb)):
        fa = bisect.bisect_right(xa, x) / na
        fb = bisect.bisect_right(xb, x) / nb
        d = max(d, abs(fa - fb))
    return d


def cloud_variant_model(model: DeviceModel, variant: str = "cloud") -> DeviceModel:
    """``model`` restricted to one setup variant (exchanges and behaviour of that variant).

    A device of the full model answers a toggle with the exchange learned for that exact
    request key in any variant (``DeviceModel.exchange``), i.e. the local strip bridge's
    queued f8 d0 timing; restricted to the real-cloud variant it answers every 0x73 with the
    0x7B learned there (real devices answering the real cloud).
    """
    exchanges = [e for e in model.exchanges if e.variant == variant]
    if not exchanges:
        raise ValueError(f"the model has no exchanges of variant {variant!r}")
    behaviour = {v: b for v, b in model.behaviour.items() if v == variant}
    return DeviceModel(
        sources=list(model.sources),
        exchanges=exchanges,
        behaviour=behaviour,
        devices=list(model.devices),
        findings=dict(model.findings),
    )


def rate(part: int, whole: int) -> float:
    """``part / whole``, NaN for an empty whole."""
    return part / whole if whole else math.nan
