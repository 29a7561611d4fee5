# Reconnecting (issue 13, deviations 3 and 4), pure parts: the importer recovers the spread of
# connection starts from synthetic captures with known offsets (with and without connection
# ids), the model file keeps it (and reads older files without it), merging pools it; the
# device engine dials again 0.25 s (scaled) after a close, and after failed dials waits a draw
# from the smoothed spread and then the spread's span, from its own seeded stream.
from __future__ import annotations

import random
import statistics
from pathlib import Path

import msgpack
import pytest

from cyncsim.replay.engine import DeviceEngine, ModelView
from cyncsim.replay.engine._reconnect import (
    DEFAULT_RECONNECT_AFTER_CLOSE_S,
    DEFAULT_SPREAD_S,
    sample_spread,
    spread_bandwidth,
)
from cyncsim.replay.model import DeviceModel, Distribution, import_captures
from cyncsim.replay.payloads import build_hello
from cyncsim.simulator._base import default_model
from tests.support import HELLO_ACK, write_text_log

T0 = 1_762_419_475.0
OFFSETS = [0.0, 0.8, 1.8, 7.3, 10.6, 11.7, 12.3, 14.1, 21.9, 31.4]


def _dev(i: int) -> bytes:
    return bytes((0x30, 0, 0, i + 1))


def _auth(i: int) -> bytes:
    return f"1e07d{i:011x}".encode()


def _flows(base: float) -> list[list[tuple[float, str, bytes]]]:
    # each device connects at base + its offset, is answered, and pings once
    return [
        [
            (base + off, "device", build_hello(_dev(i), _auth(i)).encode()),
            (base + off + 0.04, "cloud", HELLO_ACK),
        ]
        for i, off in enumerate(OFFSETS)
    ]


def test_spread_learned_from_exact_flows(tmp_path: Path) -> None:
    path = tmp_path / "exact.txt"
    write_text_log(path, _flows(T0))
    (beh,) = import_captures([str(path)]).behaviour.values()
    assert beh.connect_spread.values == pytest.approx(OFFSETS, abs=1e-6)


def test_spread_learned_without_connection_ids(tmp_path: Path) -> None:
    # 085753's shape: no connection ids, a device's first packet is its connection start; a
    # later hello of the same device (a reconnect) is not a new start.
    flows = _flows(T0)
    flows[2].append((T0 + 50.0, "device", build_hello(_dev(2), _auth(2)).encode()))
    path = tmp_path / "mixed.txt"
    write_text_log(path, flows)
    text = path.read_text(encoding="utf-8")
    for n in range(len(flows), 0, -1):
        text = text.replace(f" [conn:{n}]", "")
    path.write_text(text, encoding="utf-8")
    (beh,) = import_captures([str(path)]).behaviour.values()
    assert beh.connect_spread.values == pytest.approx(OFFSETS, abs=1e-6)


def test_spread_pooled_over_sources_each_from_its_own_first(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    write_text_log(a, _flows(T0))
    write_text_log(b, _flows(T0 + 3600))
    (beh,) = import_captures([str(a), str(b)]).behaviour.values()
    assert beh.connect_spread.values == pytest.approx(sorted(OFFSETS * 2), abs=1e-6)
    one = import_captures([str(a)])
    merged = one.merge(import_captures([str(b)]))
    (mb,) = merged.behaviour.values()
    assert mb.connect_spread.values == beh.connect_spread.values


def test_model_file_keeps_the_spread_and_reads_older_files() -> None:
    model = default_model()
    again = DeviceModel.loads(model.dumps())
    assert again.behaviour["cloud"].connect_spread == model.behaviour["cloud"].connect_spread
    obj = msgpack.unpackb(model.dumps(), raw=False, strict_map_key=False)
    for beh in obj["behaviour"].values():
        del beh["connect_spread"]
    old = DeviceModel.loads(msgpack.packb(obj, use_bin_type=True))
    assert not old.behaviour["cloud"].connect_spread
    assert ModelView.get(old, "device").spread is None  # the engine then uses the default


def test_shipped_model_has_the_captured_wave() -> None:
    spread = ModelView.get(default_model(), "device").spread
    assert spread is not None and spread.count >= 25  # 085753's 25 devices, the socat logs
    assert spread.values[0] == 0.0 and 25 < spread.values[-1] < 35  # within ~30 s


def _engine(seed: int, model: DeviceModel | None = None, scale: float = 0.05) -> DeviceEngine:
    return DeviceEngine(model or default_model(), _dev(1), _auth(1), mesh_node=1, seed=seed,
                        time_scale=scale)  # fmt: skip


def test_reconnect_after_a_close_is_a_quarter_second_scaled() -> None:
    assert _engine(1).reconnect_delay() == pytest.approx(DEFAULT_RECONNECT_AFTER_CLOSE_S * 0.05)
    assert _engine(1, scale=0).reconnect_delay() == 0.0


def test_retry_after_failed_dials_draws_the_wave_then_waits_its_span() -> None:
    e = _engine(7)
    spread = e.view.spread
    assert spread is not None
    first = e.retry_delay()
    assert 0 < first < (spread.values[-1] + 4 * spread_bandwidth(spread.values)) * 0.05
    span = spread.values[-1] * 0.05
    assert [e.retry_delay() for _ in range(3)] == pytest.approx([span] * 3)
    e.connection_made(0.0)  # connected again: the next failure draws afresh
    assert e.retry_delay() != pytest.approx(span)
    assert _engine(7, scale=0).retry_delay() == 0.0


def test_retry_draws_follow_the_seed_per_device() -> None:
    draws = [_engine(s).retry_delay() for s in range(200)]
    assert draws == [_engine(s).retry_delay() for s in range(200)]
    assert len(set(draws)) == 200
    # The delay/behaviour streams are not consumed: heartbeats stay as they were.
    a, b = _engine(3), _engine(3)
    a.retry_delay()
    a.connection_made(0.0)
    b.connection_made(0.0)
    assert a.next_deadline() == b.next_deadline()


def test_smoothed_spread_keeps_the_shape_without_point_masses() -> None:
    spread = Distribution.from_samples([0.0, 0.06, 0.8, 12.32, 12.32, 12.32, 14.1, 31.4])
    rng = random.Random(5)
    draws = [sample_spread(spread, rng) for _ in range(20_000)]
    assert min(draws) >= 0.0
    # the kernel moves the mean by less than its bandwidth (reflection at 0 adds a little)
    shift = statistics.fmean(draws) - statistics.fmean(spread.values)
    assert 0 <= shift < spread_bandwidth(spread.values)
    # three captured starts at one instant are not 3/8 of the draws at that instant
    assert sum(abs(d - 12.32) < 0.01 for d in draws) / len(draws) < 0.01
    default = [sample_spread(None, rng) for _ in range(2000)]
    assert min(default) >= 0 and max(default) <= DEFAULT_SPREAD_S
