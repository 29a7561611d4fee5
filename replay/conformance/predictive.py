# Predictive checks: is a real latency sample plausible as one more run of the simulator?
#
# Strategy: pure statistics (numpy, scipy.stats.ks_2samp) on plain lists of seconds.  The
# simulator is run N times on the same held-out requests with different seeds; the real sample
# is one more draw if the model is right.  Two checks, both rank-based so they need no
# distributional assumption:
#   * KS rank.  d_real = KS(real, all runs pooled); for each run i, d_i = KS(run i, the other
#     runs pooled) (leave one out).  p = (1 + #{d_i >= d_real}) / (N_eff + 1), N_eff the runs
#     that produced samples.  Its resolution is 1 / (N_eff + 1): with fewer than 20 runs p can
#     never fall below 0.05, and the envelope below carries the verdict.
#   * Envelope.  The runs' p50, p95 and max each give N values; the envelope is their 5th to
#     95th percentile as empirical quantiles (numpy method "inverted_cdf": with N < 20 that is
#     the runs' own minimum and maximum).  The real p50, p95 and max are placed in it.
# Verdict (one rule, in ``verdict``): ``insufficient`` when the real sample has fewer than
# MIN_SAMPLES values, fewer than 2 runs produced samples, or the runs together fewer than
# MIN_SAMPLES; else ``plausible`` when p >= ALPHA and the real p50 lies inside the p50
# envelope (bounds included); else ``implausible``.  Under a right model a real p50 falls
# outside the range of N runs with probability 2 / (N + 1) (0.22 at N = 8): more runs give a
# sharper check.  The p95 and max placements are reported, not judged (tails of small samples
# are too noisy to fail on).
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

__all__ = [
    "ALPHA",
    "ENVELOPE",
    "MIN_SAMPLES",
    "STATS",
    "Envelope",
    "PredictiveCheck",
    "ks_distance",
    "predictive_check",
]

ALPHA = 0.05
MIN_SAMPLES = 10
ENVELOPE = (5.0, 95.0)  # percentiles of the runs' statistics
STATS = ("p50", "p95", "max")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One statistic: the real value and the runs' 5th-95th percentile range of it."""

    real: float | None
    low: float | None
    high: float | None

    @property
    def inside(self) -> bool | None:
        if self.real is None or self.low is None or self.high is None:
            return None
        return self.low <= self.real <= self.high

    def as_dict(self, scale: float = 1000.0) -> dict[str, object]:
        def conv(v: float | None) -> float | None:
            return None if v is None else round(v * scale, 3)

        return {
            "real": conv(self.real),
            "low": conv(self.low),
            "high": conv(self.high),
            "inside": self.inside,
        }


@dataclass(frozen=True, slots=True)
class PredictiveCheck:
    """The predictive check of one kind (seconds inside, milliseconds in ``as_dict``)."""

    n_real: int
    run_counts: tuple[int, ...]
    envelopes: dict[str, Envelope]
    ks_real: float | None  # KS distance, real sample vs all runs pooled
    ks_runs: tuple[float, ...]  # each run vs the other runs pooled
    p_value: float | None
    verdict: str  # plausible | implausible | insufficient
    reason: str
    real: tuple[float, ...] = field(default=(), repr=False)
    runs: tuple[tuple[float, ...], ...] = field(default=(), repr=False)

    def as_dict(self) -> dict[str, object]:
        return {
            "n_real": self.n_real,
            "run_counts": list(self.run_counts),
            **{name: env.as_dict() for name, env in self.envelopes.items()},
            "ks_real": None if self.ks_real is None else round(self.ks_real, 4),
            "ks_runs": [round(d, 4) for d in self.ks_runs],
            "p_value": None if self.p_value is None else round(self.p_value, 4),
            "verdict": self.verdict,
            "reason": self.reason,
        }


def ks_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """The two-sample KS statistic (scipy.stats.ks_2samp)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ks_2samp(list(a), list(b)).statistic)


def _stat(values: Sequence[float], name: str) -> float:
    if name == "max":
        return float(max(values))
    q = {"p50": 50.0, "p95": 95.0}[name]
    return float(np.percentile(np.asarray(values, dtype=float), q))


def _envelope(real: Sequence[float], runs: Sequence[Sequence[float]], name: str) -> Envelope:
    r = _stat(real, name) if real else None
    vals = [_stat(run, name) for run in runs if run]
    if not vals:
        return Envelope(r, None, None)
    lo, hi = np.percentile(np.asarray(vals, dtype=float), ENVELOPE, method="inverted_cdf")
    return Envelope(r, float(lo), float(hi))


def predictive_check(
    real: Sequence[float],
    runs: Sequence[Sequence[float]],
    *,
    alpha: float = ALPHA,
    min_samples: int = MIN_SAMPLES,
) -> PredictiveCheck:
    """The real sample against the runs' samples (all in the same unit)."""
    real = [float(x) for x in real if math.isfinite(x)]
    runs = [[float(x) for x in run if math.isfinite(x)] for run in runs]
    filled = [run for run in runs if run]
    envelopes = {name: _envelope(real, filled, name) for name in STATS}
    counts = tuple(len(run) for run in runs)
    pooled = [x for run in filled for x in run]

    def done(verdict: str, reason: str, d: float | None = None, ds: tuple[float, ...] = (),
             p: float | None = None) -> PredictiveCheck:  # fmt: skip
        return PredictiveCheck(len(real), counts, envelopes, d, ds, p, verdict, reason,
                               tuple(real), tuple(tuple(r) for r in runs))  # fmt: skip

    if len(real) < min_samples:
        return done("insufficient", f"{len(real)} real samples (fewer than {min_samples})")
    if len(filled) < 2 or len(pooled) < min_samples:
        return done("insufficient", f"the runs produced {len(pooled)} samples in "
                    f"{len(filled)} runs")  # fmt: skip
    d_real = ks_distance(real, pooled)
    ds = []
    for i, run in enumerate(filled):
        rest = [x for j, other in enumerate(filled) if j != i for x in other]
        ds.append(ks_distance(run, rest))
    p = (1 + sum(1 for d in ds if d >= d_real)) / (len(filled) + 1)
    verdict, reason = verdict_of(p, envelopes["p50"], alpha)
    return done(verdict, reason, d_real, tuple(ds), p)


def verdict_of(p: float, p50: Envelope, alpha: float = ALPHA) -> tuple[str, str]:
    """The rule: plausible when p >= alpha and the real p50 is inside the runs' envelope."""
    why = []
    if p < alpha:
        why.append(f"KS rank p = {p:.3f} < {alpha:g}")
    if not p50.inside:
        where = "below" if p50.real is not None and p50.low is not None and p50.real < p50.low \
            else "above"  # fmt: skip
        why.append(f"real p50 {where} the runs' envelope")
    if why:
        return "implausible", "; ".join(why)
    return "plausible", ""
