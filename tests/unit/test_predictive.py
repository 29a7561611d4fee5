# The predictive check of `cyncsim validate` (replay/conformance/predictive.py) on synthetic
# samples with known answers: a real sample from the runs' own distribution is plausible with
# a high p-value; a shifted one is implausible (p at its floor, p50 outside the envelope);
# fewer than 10 real samples, or runs that produced nothing, are insufficient; the p-value is
# the rank formula.
from __future__ import annotations

import random

import pytest

from cyncsim.replay.conformance.predictive import (
    Envelope,
    ks_distance,
    predictive_check,
    verdict_of,
)


def _lognormal(rng: random.Random, n: int, mu: float = -3.0, shift: float = 0.0) -> list[float]:
    return [rng.lognormvariate(mu, 0.5) + shift for _ in range(n)]


def test_same_distribution_is_plausible_with_a_high_p() -> None:
    rng = random.Random(1)
    plausible = 0
    ps = []
    for _ in range(20):
        runs = [_lognormal(rng, 40) for _ in range(19)]
        check = predictive_check(_lognormal(rng, 40), runs)
        ps.append(check.p_value)
        plausible += check.verdict == "plausible"
    # under the null the p-value is uniform on {1/20, ..., 1}: its mean is about 0.5, and the
    # verdict fails only on p50 outside the runs' range (2/20) or p < 0.05 (never with 19 runs)
    assert 0.3 < sum(p for p in ps if p is not None) / len(ps) < 0.7
    assert plausible >= 14


def test_shifted_distribution_is_implausible() -> None:
    rng = random.Random(2)
    runs = [_lognormal(rng, 40) for _ in range(19)]
    check = predictive_check(_lognormal(rng, 40, shift=0.05), runs)
    assert check.verdict == "implausible"
    assert check.p_value == pytest.approx(1 / 20)
    assert check.ks_real is not None and check.ks_real > max(check.ks_runs)
    assert check.envelopes["p50"].inside is False
    assert "above the runs' envelope" in check.reason


def test_few_real_samples_are_insufficient() -> None:
    rng = random.Random(3)
    runs = [_lognormal(rng, 40) for _ in range(8)]
    check = predictive_check(_lognormal(rng, 9), runs)
    assert check.verdict == "insufficient" and check.p_value is None
    assert "9 real samples" in check.reason
    assert check.envelopes["p50"].low is not None  # still placed, for the table


def test_runs_without_samples_are_insufficient() -> None:
    rng = random.Random(4)
    check = predictive_check(_lognormal(rng, 30), [[], [], [0.1]])
    assert check.verdict == "insufficient"
    assert check.run_counts == (0, 0, 1)


def test_p_value_is_the_rank_of_the_real_distance() -> None:
    runs = [[0.01 * k + 0.001 * i for k in range(10)] for i in range(4)]
    real = [0.01 * k + 0.0025 for k in range(10)]
    check = predictive_check(real, runs)
    pooled = [x for r in runs for x in r]
    assert check.ks_real == pytest.approx(ks_distance(real, pooled))
    rest = [[x for j, r in enumerate(runs) if j != i for x in r] for i in range(4)]
    ds = [ks_distance(run, other) for run, other in zip(runs, rest, strict=True)]
    assert check.ks_runs == pytest.approx(ds)
    d_real = check.ks_real
    assert d_real is not None
    expected = (1 + sum(d >= d_real for d in ds)) / 5
    assert check.p_value == pytest.approx(expected)


def test_envelope_is_the_runs_range_below_20_runs() -> None:
    runs = [[float(i)] * 10 for i in range(8)]
    check = predictive_check([3.5] * 10, runs)
    env = check.envelopes["p50"]
    assert (env.low, env.high, env.inside) == (0.0, 7.0, True)


def test_verdict_rule() -> None:
    inside = Envelope(0.1, 0.05, 0.2)
    assert verdict_of(0.5, inside) == ("plausible", "")
    assert verdict_of(0.04, inside)[0] == "implausible"
    assert verdict_of(0.5, Envelope(0.01, 0.05, 0.2)) == (
        "implausible",
        "real p50 below the runs' envelope",
    )
