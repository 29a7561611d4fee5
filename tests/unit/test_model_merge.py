# Models that grow: merging models equals importing their captures at once (identical where
# the learner keeps exact values, within the stated tolerance where summaries are merged), in
# any order, keeps provenance, and refuses a capture merged twice.
from __future__ import annotations

import math
from pathlib import Path

import pytest

from cyncsim.replay.errors import ModelError
from cyncsim.replay.model import (
    DeviceModel,
    Distribution,
    ResponseModel,
    import_captures,
    merge_models,
)
from tests.support import capture_path

A = ["capture_20251106_085753.txt"]
B = ["capture_20251107_152132.txt"]
S = ["socat/clean_capture_test.txt", "socat/mode_test_capture.txt"]
REL_TOL = 1e-3  # merged sketches: each stored quantile within 0.1 % (dist.py)


def _paths(names: list[str]) -> list[str]:
    return [str(capture_path(n)) for n in names]


@pytest.fixture(scope="module")
def models() -> dict[str, DeviceModel]:
    return {
        "a": import_captures(_paths(A)),
        "b": import_captures(_paths(B)),
        "s": import_captures(_paths(S)),
        "all": import_captures(sorted(_paths(A + B + S))),
    }


def assert_dist_close(got: Distribution, want: Distribution, what: str) -> None:
    assert got.count == want.count, what
    if got.exact and want.exact:
        assert got.values == want.values, what
        return
    for q in (0.0, 0.5, 0.95, 0.99, 1.0):
        g, w = got.quantile(q), want.quantile(q)
        assert math.isclose(g, w, rel_tol=REL_TOL, abs_tol=1e-6), f"{what} q{q}: {g} != {w}"


def _nth(responses: list[ResponseModel]) -> list[ResponseModel]:
    """Responses by (key, n-th of that key): a kind can answer twice (f9 52)."""
    seen: dict[str, int] = {}
    keyed = []
    for r in responses:
        seen[r.key] = seen.get(r.key, 0) + 1
        keyed.append(((r.key, seen[r.key]), r))
    return [r for _, r in sorted(keyed, key=lambda kr: kr[0])]


def _identity(model: DeviceModel) -> list[tuple[object, ...]]:
    # The state is the first one seen; a status report of a node that only another capture
    # names is not in a single capture's model (the tolerance stated in model/_merge.py).
    return [(d.device_id, d.auth_code, d.variant, d.firmware, d.mesh_node, sorted(d.state))
            for d in model.devices]  # fmt: skip


def assert_equivalent(merged: DeviceModel, at_once: DeviceModel, *, unanswered: int = 0) -> None:
    """What a merge keeps equals what one import of every capture learns.

    ``unanswered``: requests a model saw of a kind it never saw answered (it keeps no
    exchange for them), missing from the merge's request counts (model/_merge.py).
    """
    assert sorted(map(str, merged.sources)) == sorted(map(str, at_once.sources))
    assert merged.findings == at_once.findings
    assert _identity(merged) == _identity(at_once)
    got = {(e.variant, e.request, e.role): e for e in merged.exchanges}
    want = {(e.variant, e.request, e.role): e for e in at_once.exchanges}
    assert sorted(got) == sorted(want)
    missing = 0
    for key, w in want.items():
        g = got[key]
        assert (g.answered, g.ambiguous) == (w.answered, w.ambiguous), key
        missing += w.requests - g.requests
        assert sorted(r.key for r in g.responses) == sorted(r.key for r in w.responses), key
        for gr, wr in zip(_nth(g.responses), _nth(w.responses), strict=True):
            assert gr.share == pytest.approx(wr.share, abs=1e-4), key
            assert_dist_close(gr.latency, wr.latency, f"{key} {gr.key} latency")
            assert (gr.service is None) == (wr.service is None), key
            if gr.service is not None and wr.service is not None:
                assert_dist_close(gr.service, wr.service, f"{key} {gr.key} service")
        assert sorted(g.by_outstanding) == sorted(w.by_outstanding), key
        for b, d in w.by_outstanding.items():
            assert_dist_close(g.by_outstanding[b], d, f"{key} by_outstanding {b}")
    assert sorted(merged.behaviour) == sorted(at_once.behaviour)
    for v, wb in at_once.behaviour.items():
        gb = merged.behaviour[v]
        for part in ("heartbeat_idle", "status_interval"):
            assert_dist_close(getattr(gb, part), getattr(wb, part), f"{v} {part}")
            assert getattr(gb, part).method == getattr(wb, part).method
        assert gb.connect_scripts == wb.connect_scripts
    assert missing == unanswered


def test_merge_equals_importing_everything_at_once(models: dict[str, DeviceModel]) -> None:
    assert_equivalent(models["a"].merge(models["b"]), import_captures(sorted(_paths(A + B))))
    # clean_capture_test.txt has one device 0x7B that nothing answers; the socat model keeps
    # no 0x7B exchange, so that one request is missing from the merged count.
    merged = models["a"].merge(models["b"]).merge(models["s"])
    assert_equivalent(merged, models["all"], unanswered=1)


def test_merge_order_does_not_matter(models: dict[str, DeviceModel]) -> None:
    a, b, s = models["a"], models["b"], models["s"]
    first = a.merge(b).merge(s).dumps()
    assert s.merge(b).merge(a).dumps() == first
    assert b.merge(a.merge(s)).dumps() == first
    assert merge_models([s, a, b]).dumps() == first


def test_provenance_is_kept(models: dict[str, DeviceModel], tmp_path: Path) -> None:
    merged = models["a"].merge(models["s"])
    names = [str(src["name"]) for src in merged.sources]
    assert names == sorted(Path(n).name for n in A + S)
    for src in merged.sources:
        assert src["sha256"] and isinstance(src["packets"], int) and src["packets"] > 0
        assert src["variant"] == "cloud"
    path = tmp_path / "m.msgpack"
    merged.save(path)
    assert DeviceModel.load(path).sources == merged.sources


def test_a_capture_is_merged_only_once(models: dict[str, DeviceModel]) -> None:
    ab = models["a"].merge(models["b"])
    with pytest.raises(ModelError, match=r"capture_20251107_152132\.txt already in the model"):
        ab.merge(models["b"])
    with pytest.raises(ModelError, match="no models to merge"):
        merge_models([])
