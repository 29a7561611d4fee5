"""The importer's hot loop (replay/model/_hot.py) learns what the reference path learns.

The reference: ModelLearner.feed, which hands each packet to ExchangeLearner.feed (with
FlowPairer) and BehaviourLearner.feed.  The importer: import_files, whose exact flows go
through FlowLearner.  Same captures, same model, byte for byte (sources apart: the reference
is not told the file's hash)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cyncsim.replay.capture import read_capture
from cyncsim.replay.capture.pcapwrite import generate_benchmark_pcap
from cyncsim.replay.model.importer import import_files, learn_model
from cyncsim.replay.model.learn import TEMPLATE_PAIRS, _Kind

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "captures"


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    obj = dict(obj)
    obj["sources"] = [{k: v for k, v in s.items() if k != "sha256"} for s in obj["sources"]]
    return obj


@pytest.mark.parametrize(("segments", "connections", "seed"), [(3000, 4, 1), (12000, 20, 0)])
def test_hot_loop_learns_what_the_reference_learns(
    tmp_path: Path, segments: int, connections: int, seed: int
) -> None:
    pcap = tmp_path / "bench.pcap"
    generate_benchmark_pcap(pcap, segments, connections, seed=seed)
    reference = learn_model(read_capture(pcap))
    hot = import_files([str(pcap)]).finish()
    assert hot.exchanges, "nothing learned: the comparison would be empty"
    assert _content(hot.to_obj()) == _content(reference.to_obj())


def test_hot_loop_on_the_socat_logs() -> None:
    """Exact flows from a real capture format (socat logs are split into connections)."""
    logs = sorted((SHARED / "socat").glob("*.txt")) if SHARED.is_dir() else []
    if not logs:
        pytest.skip(f"no socat logs in {SHARED / 'socat'}")
    result = read_capture(logs[0])
    for extra in logs[1:]:
        result.extend(read_capture(extra))
    reference = learn_model(result)
    hot = import_files([str(p) for p in logs]).finish()
    assert _content(hot.to_obj()) == _content(reference.to_obj())


def test_template_pairs_are_an_evenly_spaced_sample_beyond_the_limit() -> None:
    kind = _Kind(("0xd3", "0xd8", 0), "cloud")
    total = 5 * TEMPLATE_PAIRS + 123
    for i in range(total):
        kind.add(((0, 0, i), None, None, None))  # type: ignore[arg-type]
    kept = [item[0][2] for item in kind.pairs]
    assert kind.n == total
    assert TEMPLATE_PAIRS // 2 <= len(kept) <= TEMPLATE_PAIRS
    assert kept[0] == 0  # the exemplar stays the first pair
    assert kept == list(range(0, total, kind.stride))  # every stride-th pair, none missing
