# Statistics of the simulator suites: percentiles, the standard latency summary, and the KS
# distance to a learned distribution (scipy).
#
# Strategy: percentiles interpolate as replay.model.Distribution does, so measured and learned
# figures compare alike; KS is scipy's ks_2samp against a dense grid of the piecewise-linear
# quantiles the simulator samples.  scipy is imported on first use, then gc.freeze()d.
from __future__ import annotations

import functools
import gc
import math
from collections.abc import Iterable, Sequence
from typing import Any

from cyncsim.replay.model import Distribution
from cyncsim.replay.model.dist import sorted_quantile

__all__ = ["GRID", "ks", "ks_random", "learned_summary", "percentile", "rate", "summary"]

GRID = 20_000
_KEYS = (("p50", 0.50), ("p90", 0.90), ("p95", 0.95), ("p99", 0.99))


def percentile(values: Sequence[float], q: float) -> float:
    """Quantile ``q`` (0-1) of ``values`` by linear interpolation; NaN when empty."""
    return sorted_quantile(sorted(values), min(max(q, 0.0), 1.0)) if values else math.nan


def summary(samples: Iterable[float], unit: str = "ms", prefix: str = "") -> dict[str, float]:
    """p50/p90/p95/p99/max/mean of ``samples`` (seconds) in ms or us (NaN when empty)."""
    scale, vals = {"ms": 1e3, "us": 1e6, "s": 1.0}[unit], sorted(samples)
    figures = {k: sorted_quantile(vals, q) if vals else math.nan for k, q in _KEYS}
    figures["max"] = vals[-1] if vals else math.nan
    figures["mean"] = sum(vals) / len(vals) if vals else math.nan
    return {f"{prefix}{k}_{unit}": v * scale for k, v in figures.items()}


def learned_summary(dist: Distribution, scale: float = 1.0) -> dict[str, float]:
    """The same figures (ms) for a learned distribution times ``scale``, keys learned_*."""
    return summary([v * scale for v in dist.values], prefix="learned_")


@functools.cache
def _scipy_stats() -> Any:
    import scipy.stats

    gc.freeze()  # its thousands of objects are never garbage: keep collections short
    return scipy.stats


def ks(samples: Sequence[float], dist: Distribution, scale: float = 1.0) -> float:
    """sup |F_measured - F_learned|, F_learned the piecewise-linear CDF the simulator samples
    (``dist`` times ``scale``); NaN without samples."""
    if not dist.values:
        raise ValueError("empty distribution")
    if not samples:
        return math.nan
    import numpy as np

    vals = np.asarray(dist.values, dtype=float) * scale
    pos = (np.arange(GRID) + 0.5) / GRID * (len(vals) - 1)
    grid = np.interp(pos, np.arange(len(vals)), vals)
    return float(_scipy_stats().ks_2samp(samples, grid, method="asymp").statistic)


def ks_random(n: int) -> float:
    """The median KS statistic of ``n`` independent draws from the distribution itself."""
    return float(_scipy_stats().kstwo.ppf(0.5, n)) if n >= 1 else math.nan


def rate(part: int, whole: int) -> float:
    """``part / whole``, NaN for an empty whole."""
    return part / whole if whole else math.nan
