# The predictive check of `cyncsim validate` (replay/conformance/predictive.py) on synthetic
# samples with known answers: at N = 20 runs a real sample from the runs' own distribution is
# plausible (p uniform, false rejections about 1/21) and a shifted one implausible (p at its
# floor 1/21); below 20 runs the KS rank cannot reject; the envelope is information, not the
# verdict; a model learned from a small training sample is rejected about 5% of the time when
# the reference distances carry n_train (far more often without); fewer than 10 real samples,
# or runs that produced nothing, are insufficient; the p-value is the rank formula.
from __future__ import annotations

import random

import pytest

from cyncsim.replay.conformance.predictive import (
    MIN_RUNS_TO_REJECT,
    can_reject,
    ks_distance,
    predictive_check,
    verdict_of,
)


def _lognormal(rng: random.Random, n: int, mu: float = -3.0, shift: float = 0.0) -> list[float]:
    return [rng.lognormvariate(mu, 0.5) + shift for _ in range(n)]


def test_same_distribution_is_plausible_at_20_runs() -> None:
    rng = random.Random(1)
    plausible = 0
    ps = []
    for _ in range(200):
        runs = [_lognormal(rng, 40) for _ in range(20)]
        check = predictive_check(_lognormal(rng, 40), runs)
        assert check.p_value is not None
        ps.append(check.p_value)
        plausible += check.verdict == "plausible"
        assert (check.verdict == "plausible") == (check.p_value >= 0.05)
    # under the null the p-value is uniform on {1/21, ..., 1}: its mean is about 0.5, and the
    # verdict fails only when p = 1/21 (probability 1/21: about 10 of 200, sd 3)
    assert 0.4 < sum(ps) / len(ps) < 0.6
    assert plausible >= 180


def test_shifted_distribution_is_implausible_at_20_runs() -> None:
    rng = random.Random(2)
    runs = [_lognormal(rng, 40) for _ in range(20)]
    check = predictive_check(_lognormal(rng, 40, shift=0.05), runs)
    assert check.verdict == "implausible"
    assert check.p_value == pytest.approx(1 / 21)
    assert check.ks_real is not None and check.ks_real > max(check.ks_runs)
    assert check.envelopes["p50"].inside is False  # reported beside the verdict
    assert check.reason == "KS rank p = 0.048 < 0.05"


def test_below_20_runs_the_ks_rank_cannot_reject() -> None:
    assert MIN_RUNS_TO_REJECT == 20
    assert not can_reject(19) and can_reject(20)
    rng = random.Random(2)
    runs = [_lognormal(rng, 40) for _ in range(19)]
    check = predictive_check(_lognormal(rng, 40, shift=0.05), runs)
    # the same shift, one run fewer: p at its floor 1/20 = 0.05 is not below 0.05
    assert check.p_value == pytest.approx(1 / 20)
    assert check.verdict == "plausible"


def test_envelope_is_information_not_the_verdict() -> None:
    # run i: 0..19 plus i/100; the real sample 0..19 minus 0.3: its p50 (9.2) is below every
    # run's (9.5-9.69), its KS distance to the pooled runs (0.05) is matched by two runs'
    runs = [[k + 0.01 * i for k in range(20)] for i in range(20)]
    check = predictive_check([k - 0.3 for k in range(20)], runs)
    assert check.envelopes["p50"].inside is False
    assert check.p_value == pytest.approx(3 / 21)
    assert check.verdict == "plausible" and check.reason == ""


def _learned(
    rng: random.Random, n_train: int, n_real: int
) -> tuple[list[float], list[list[float]]]:
    # the truth F; the model is the training sample (runs resample it); the real held-out
    # sample is a fresh draw from F
    train = _lognormal(rng, n_train)
    runs = [[rng.choice(train) for _ in range(n_real)] for _ in range(20)]
    return _lognormal(rng, n_real), runs


def test_training_size_keeps_a_learned_model_at_alpha() -> None:
    rng = random.Random(6)
    trials = 150
    with_n = without = 0
    for _ in range(trials):
        real, runs = _learned(rng, 21, 10)
        with_n += predictive_check(real, runs, n_train=21).verdict == "implausible"
        without += predictive_check(real, runs).verdict == "implausible"
    # expected about 0.05 with n_train (sd 0.018), about 0.16 without
    assert with_n / trials <= 0.1
    assert without / trials >= 0.1 and without > with_n


def test_training_size_still_rejects_a_shift() -> None:
    rng = random.Random(7)
    train = _lognormal(rng, 300)
    runs = [[rng.choice(train) for _ in range(100)] for _ in range(20)]
    check = predictive_check(_lognormal(rng, 100, shift=0.02), runs, n_train=300)
    assert check.n_train == 300 and check.verdict == "implausible"
    # deterministic: the draws use a fixed seed
    again = predictive_check(check.real, check.runs, n_train=300)
    assert again.ks_runs == check.ks_runs and again.p_value == check.p_value


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
    assert verdict_of(0.5) == ("plausible", "")
    assert verdict_of(0.05) == ("plausible", "")
    assert verdict_of(1 / 21) == ("implausible", "KS rank p = 0.048 < 0.05")
