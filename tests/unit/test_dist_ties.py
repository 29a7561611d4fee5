"""Tied samples: the inverse CDF draws spread them instead of drawing them as an atom; the
reported percentiles stay the samples' own."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cyncsim.replay.model.dist import Distribution, sorted_quantile, tie_knots

# 0x83 fa db -> 0x88 of the default model (ms): three answers read by socat in one record
REAL = (41.608, 41.775, 41.872, 41.97, 42.028, 43.217, 43.341, 44.529, 44.529, 44.529,
        44.805, 44.902, 44.954, 45.002, 45.056, 45.445, 45.534, 49.543, 49.752, 51.451,
        51.574)  # fmt: skip


def test_without_ties_the_order_statistics_are_the_knots() -> None:
    vals = (1.0, 2.0, 4.0, 8.0)
    assert tie_knots(vals) is None
    d = Distribution(vals, 4)
    for q in (0.0, 0.1, 0.33, 0.5, 0.9, 1.0):
        assert d.quantile(q) == d.inverse_cdf(q) == sorted_quantile(vals, q)
    assert d.knots() == ((0.0, 1 / 3, 2 / 3, 1.0), vals)


def test_a_run_of_equal_values_is_one_knot_at_its_middle_rank() -> None:
    assert tie_knots(REAL) is not None
    ranks, at = tie_knots(REAL) or ((), ())
    assert at.count(44.529) == 1
    assert ranks[at.index(44.529)] == 8.0  # ranks 7, 8, 9
    assert ranks[0] == 0.0 and ranks[-1] == 20.0
    d = Distribution(REAL, len(REAL))
    assert d.inverse_cdf(8 / 20) == pytest.approx(44.529)
    # between the neighbouring distinct values the draws' inverse CDF is linear, not flat
    assert 43.341 < d.inverse_cdf(7 / 20) < 44.529 < d.inverse_cdf(9 / 20) < 44.805
    # the reported percentiles stay the samples' own (a summary says what was measured)
    assert d.quantile(7 / 20) == d.quantile(9 / 20) == 44.529


def test_ends_stay_the_minimum_and_maximum() -> None:
    vals = (1.0, 1.0, 1.0, 2.0, 3.0, 3.0)
    ranks, at = tie_knots(vals) or ((), ())
    assert (ranks, at) == ((0.0, 3.0, 5.0), (1.0, 2.0, 3.0))
    d = Distribution(vals, 6)
    assert d.inverse_cdf(0.0) == 1.0 and d.inverse_cdf(1.0) == 3.0
    assert Distribution((5.0, 5.0, 5.0), 3).inverse_cdf(0.7) == 5.0


def test_draws_hit_a_tied_value_no_more_than_any_other() -> None:
    d = Distribution(REAL, len(REAL))
    rng = random.Random(3)
    draws = [d.sample(rng) for _ in range(20_000)]
    assert sum(1 for x in draws if x == 44.529) == 0  # the plain inverse CDF: about 10%
    below = sum(1 for x in draws if x <= 44.529) / len(draws)
    assert below == pytest.approx(8 / 20, abs=0.015)  # the knot's rank
    assert min(draws) >= REAL[0] and max(draws) <= REAL[-1]


@given(st.lists(st.integers(0, 6), min_size=2, max_size=40), st.floats(0.0, 1.0))
def test_quantile_is_monotone_and_inside_the_range(raw: list[int], q: float) -> None:
    vals = tuple(sorted(float(v) for v in raw))
    d = Distribution(vals, len(vals))
    x = d.inverse_cdf(q)
    assert vals[0] <= x <= vals[-1]
    assert d.inverse_cdf(min(1.0, q + 0.01)) >= x
    positions, at = d.knots()
    assert positions[0] == 0.0 and positions[-1] == 1.0
    assert all(a < b for a, b in itertools.pairwise(positions))
    assert all(a <= b for a, b in itertools.pairwise(at))
