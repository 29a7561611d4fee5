"""The bounded summary of a distribution: accuracy against the exact samples, and merging."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cyncsim.replay.model.dist import DEFAULT_CAP, Distribution, Samples
from cyncsim.replay.model.sketch import ALPHA, LogSketch

latencies = st.lists(
    st.floats(min_value=0.0, max_value=600.0, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=6000,
)


def _close(got: float, want: float) -> bool:
    return abs(got - want) <= ALPHA * abs(want) + 1e-9


@settings(max_examples=60, deadline=None)
@given(latencies)
def test_sketch_order_statistics_within_alpha(samples: list[float]) -> None:
    vals = sorted(round(v, 9) for v in samples)
    sk = LogSketch.of(vals)
    ranks = sorted({0, len(vals) - 1, len(vals) // 2, (len(vals) * 99) // 100})
    for r, got in zip(ranks, sk.order_statistics(ranks), strict=True):
        assert _close(got, vals[r])
    assert sk.order_statistics([0, len(vals) - 1]) == [vals[0], vals[-1]]  # exact ends


@settings(max_examples=40, deadline=None)
@given(latencies, st.integers(min_value=2, max_value=300))
def test_bounded_learner_quantiles_within_alpha_of_exact(samples: list[float], limit: int) -> None:
    acc = Samples(limit=limit)
    for v in samples:
        acc.add(v)
    got = acc.build()
    exact = Distribution.from_samples(samples)
    assert got.count == exact.count
    if len(samples) <= limit:
        assert got == exact  # exact while few
        return
    if exact.count <= DEFAULT_CAP:
        return  # a sketch of fewer than cap samples is never turned into values
    for q in (0.0, 0.5, 0.9, 0.95, 0.99, 1.0):
        assert _close(got.quantile(q), exact.quantile(q)) or abs(
            got.quantile(q) - exact.quantile(q)
        ) <= ALPHA * max(map(abs, exact.values))


@settings(max_examples=40, deadline=None)
@given(latencies, latencies, latencies)
def test_merge_is_order_free(a: list[float], b: list[float], c: list[float]) -> None:
    da, db, dc = (Distribution.from_samples(x) for x in (a, b, c))
    ab_c = da.merge(db).merge(dc)
    assert ab_c == dc.merge(db.merge(da)) == db.merge(dc).merge(da)
    assert ab_c.count == len(a) + len(b) + len(c)
    assert Distribution.from_obj(ab_c.to_obj()) == ab_c  # the sketch survives the file


def test_merge_exact_while_few_and_sketched_beyond() -> None:
    rng = random.Random(4)
    a = [rng.lognormvariate(-3, 0.5) for _ in range(900)]
    b = [rng.lognormvariate(-2.5, 0.8) for _ in range(1000)]
    assert Distribution.from_samples(a).merge(Distribution.from_samples(b)) == (
        Distribution.from_samples(a + b)
    )
    c = [rng.lognormvariate(-2, 1.0) for _ in range(30_000)]
    merged = Distribution.from_samples(a + b).merge(Distribution.from_samples(c))
    exact = Distribution.from_samples(a + b + c)
    assert merged.count == exact.count and merged.sketch == exact.sketch
    for got, want in zip(merged.values, exact.values, strict=True):
        assert _close(got, want)
    # A bounded learner that sketched gives what the merge gives.
    acc = Samples(limit=5000)
    for v in a + b + c:
        acc.add(v)
    assert acc.build() == merged


def test_old_file_without_sketch_merges_by_weight() -> None:
    full = Distribution.from_samples([i / 10_000 for i in range(10_001)])
    old = Distribution(full.values, full.count)  # as written before sketches
    merged = old.merge(Distribution.from_samples([0.5]))
    assert merged.count == 10_002
    assert abs(merged.quantile(0.5) - 0.5) < 0.002
