# Predictive checks: is a real latency sample plausible as one more run of the simulator?
#
# Strategy: pure statistics (numpy, scipy.stats.ks_2samp) on plain lists of seconds.  The
# simulator is run N times on the same held-out requests with different seeds; the real sample
# is one more draw if the model is right.  Two rank-based measures, so no distributional
# assumption:
#   * KS rank (the verdict).  d_real = KS(real, all runs pooled); for each run i, d_i = KS(run
#     i, the other runs pooled) (leave one out).  p = (1 + #{d_i >= d_real}) / (N_eff + 1),
#     N_eff the runs that produced samples.  Were the model the truth, the real sample would
#     be exchangeable with the runs and p uniform on {1/(N+1), ..., 1}: a false rejection at
#     ALPHA has probability floor(ALPHA (N+1)) / (N+1) <= ALPHA.  Its resolution is 1/(N+1):
#     with fewer than MIN_RUNS_TO_REJECT runs p can never fall below 0.05 (``can_reject``).
#     But the model is learned from ``n_train`` real samples, and the pooled runs reproduce
#     that training sample, not the truth: d_real carries the training sample's own sampling
#     error, the leave-one-out d_i do not, and a right model is rejected far more often than
#     ALPHA (16% with 21 training and 10 held-out samples, 13% with 76 and 28, 10% with 2,000
#     and 600: lognormal simulation, model = the training sample).  So when ``n_train`` is
#     given, d_i = KS(run i, n_train values drawn with replacement from the other runs
#     pooled): both sides of the comparison then carry an n_train-sample's error, and the
#     rejection rate of a right model is back at about ALPHA (4-7.5% at those sizes).  The
#     draws use a fixed seed (BOOTSTRAP_SEED): the same samples give the same p.
#   * Envelope (information only).  The runs' p50, p95 and max each give N values; the
#     envelope is their 5th to 95th percentile as empirical quantiles (numpy method
#     "inverted_cdf": with N < 20 that is the runs' own minimum and maximum).  The real p50,
#     p95 and max are placed in it.  Not judged: a right model puts the real p50 outside the
#     range of N runs with probability 2/(N+1), which a verdict would add to the KS rank's
#     false rejections.
# Verdict (one rule, in ``verdict_of``): ``insufficient`` when the real sample has fewer than
# MIN_SAMPLES values, fewer than 2 runs produced samples, or the runs together fewer than
# MIN_SAMPLES; else ``plausible`` when p >= ALPHA, ``implausible`` when p < ALPHA.
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

__all__ = [
    "ALPHA",
    "BOOTSTRAP_SEED",
    "ENVELOPE",
    "MIN_RUNS_TO_REJECT",
    "MIN_SAMPLES",
    "STATS",
    "Envelope",
    "PredictiveCheck",
    "can_reject",
    "ks_distance",
    "predictive_check",
    "verdict_of",
]

ALPHA = 0.05
MIN_SAMPLES = 10
ENVELOPE = (5.0, 95.0)  # percentiles of the runs' statistics
STATS = ("p50", "p95", "max")
BOOTSTRAP_SEED = 20251107  # the draws of the training-size reference distances
MIN_RUNS_TO_REJECT = 20  # the fewest runs whose smallest p, 1/(N+1), is below ALPHA = 0.05


def can_reject(runs: int, alpha: float = ALPHA) -> bool:
    """Whether the KS rank of ``runs`` runs can reach p < alpha (its floor is 1/(runs+1))."""
    return 1.0 / (runs + 1) < alpha


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
    n_train: int | None  # training samples the model learned this kind from (None: unknown)
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
            "n_train": self.n_train,
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
    n_train: int | None = None,
    alpha: float = ALPHA,
    min_samples: int = MIN_SAMPLES,
) -> PredictiveCheck:
    """The real sample against the runs' samples (all in the same unit).  ``n_train``: the
    number of training samples the model learned this kind from (0 or None: the runs'
    leave-one-out distances alone)."""
    real = [float(x) for x in real if math.isfinite(x)]
    runs = [[float(x) for x in run if math.isfinite(x)] for run in runs]
    filled = [run for run in runs if run]
    envelopes = {name: _envelope(real, filled, name) for name in STATS}
    counts = tuple(len(run) for run in runs)
    pooled = [x for run in filled for x in run]

    def done(verdict: str, reason: str, d: float | None = None, ds: tuple[float, ...] = (),
             p: float | None = None) -> PredictiveCheck:  # fmt: skip
        return PredictiveCheck(len(real), n_train, counts, envelopes, d, ds, p, verdict, reason,
                               tuple(real), tuple(tuple(r) for r in runs))  # fmt: skip

    if len(real) < min_samples:
        return done("insufficient", f"{len(real)} real samples (fewer than {min_samples})")
    if len(filled) < 2 or len(pooled) < min_samples:
        return done("insufficient", f"the runs produced {len(pooled)} samples in "
                    f"{len(filled)} runs")  # fmt: skip
    d_real = ks_distance(real, pooled)
    ds = []
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    for i, run in enumerate(filled):
        rest = [x for j, other in enumerate(filled) if j != i for x in other]
        if n_train:
            rest_a = np.asarray(rest, dtype=float)
            rest = rest_a[rng.integers(0, len(rest_a), n_train)].tolist()
        ds.append(ks_distance(run, rest))
    p = (1 + sum(1 for d in ds if d >= d_real)) / (len(filled) + 1)
    verdict, reason = verdict_of(p, alpha)
    return done(verdict, reason, d_real, tuple(ds), p)


def verdict_of(p: float, alpha: float = ALPHA) -> tuple[str, str]:
    """The rule: plausible when the KS rank p-value is at least alpha, else implausible."""
    if p < alpha:
        return "implausible", f"KS rank p = {p:.3f} < {alpha:g}"
    return "plausible", ""
