# The learned model: what is learned from the real captures, sampling fidelity,
# determinism, persistence errors and the shipped default model.
from __future__ import annotations

import math
import random
from pathlib import Path

import msgpack
import pytest

from cyncsim.captures import DEFAULT_MODEL_PATH, shared_captures_dir
from cyncsim.replay.capture import read_capture
from cyncsim.replay.errors import ModelError
from cyncsim.replay.model import DeviceModel, Distribution, StratifiedUniform, import_captures
from cyncsim.replay.model.layout import fields_of
from cyncsim.replay.payloads import (
    StatusReport,
    TimeReply,
    build_hello,
    build_report,
    build_simple,
    build_time_reply,
)
from cyncsim.replay.protocol import (
    AckPacket,
    CyncPacket,
    FramedPacket,
    HelloPacket,
    IdPacket,
    PacketType,
    decode_packet,
)
from tests.support import capture_path

REAL_CLOUD = "capture_20251106_085753.txt"
LOCAL = "capture_20251107_152132.txt"


@pytest.fixture(scope="module")
def cloud_model() -> DeviceModel:
    return import_captures([str(capture_path(REAL_CLOUD))])


@pytest.fixture(scope="module")
def local_model() -> DeviceModel:
    return import_captures([str(capture_path(LOCAL))])


@pytest.fixture(scope="module")
def all_model() -> DeviceModel:
    files = sorted(str(p) for p in shared_captures_dir().glob("capture_*.txt"))
    if not files:
        pytest.skip(f"no captures in {shared_captures_dir()}")
    return import_captures(files)


def _roles(model: DeviceModel, request: str, role: str, resp: str) -> dict[str, tuple[str, int]]:
    ex = model.exchange(request, role)
    assert ex is not None, f"no exchange {request} answered by {role}"
    r = next(r for r in ex.responses if r.key == resp)
    return {f.name: (f.role, f.source) for f in r.template.fields}


def test_heartbeat_idle_between_20_and_22_s(all_model: DeviceModel) -> None:
    hb = all_model.summary()["heartbeat_idle_s"]
    assert 20.0 <= hb["p50"] <= 22.0
    assert hb["method"] == "per-connection" and hb["samples"] >= 30
    # The capture without conn ids is estimated from the aggregate ping rate, and says so.
    cloud = hb["by_variant"]["cloud"]
    assert cloud["method"] == "aggregate-rate" and 20.0 <= cloud["p50"] <= 22.5


def test_ping_latency_of_real_cloud_matches_protocol(cloud_model: DeviceModel) -> None:
    ex = cloud_model.exchange("0xd3", "cloud")
    assert ex is not None and [r.key for r in ex.responses] == ["0xd8"]
    p50_ms = ex.responses[0].latency.p50 * 1000
    assert abs(p50_ms - 42.2) <= 4.22
    # Mixed connections: pairs with several candidates are dropped, and counted.
    assert ex.ambiguous > 0 and ex.responses[0].latency.count + ex.ambiguous <= ex.requests


def test_7b_echoes_bytes_5_to_11_from_real_cloud_alone(cloud_model: DeviceModel) -> None:
    roles = _roles(cloud_model, "0x73", "device", "0x7b")
    assert roles["device_id"] == ("echo", 5)
    assert roles["msg_id"] == ("echo", 9)


def test_ack_rules_of_protocol_section_8(local_model: DeviceModel) -> None:
    assert _roles(local_model, "0x73:f8:d0", "device", "0x7b")["device_id"] == ("echo", 5)
    assert _roles(local_model, "0x73:f8:d0", "device", "0x7b")["msg_id"] == ("echo", 9)
    assert _roles(local_model, "0x83:fa:db", "cloud", "0x88")["msg_id"] == ("echo", 9)
    f9 = _roles(local_model, "0x73:f8:d0", "device", "0x73:f9:d0")
    assert f9["seq"] == ("echo", 13)  # the f9 result copies the command's sequence
    assert f9["msg_id"][0] == "counter"  # ... with the device's own 0x73 counter
    assert f9["device_id"][0] == "identity"
    assert f9["checksum"][0] == "checksum"


def test_78_copies_bytes_5_to_10(cloud_model: DeviceModel) -> None:
    roles = _roles(cloud_model, "0x7b", "cloud", "0x78")
    assert roles["device_id"] == ("echo", 5)
    assert roles["msg_id[1]"] == ("echo", 10)
    assert roles["msg_id[2]"][0] == "constant"


def test_strip_bridge_command_sequences(local_model: DeviceModel) -> None:
    for op in ("d0", "f0"):
        ex = local_model.exchange(f"0x73:f8:{op}", "device")
        assert ex is not None
        assert [r.key for r in ex.responses] == ["0x7b", f"0x73:f9:{op}", "0x83:fa:db"]
        status = ex.responses[2].template.roles()
        assert status["on"] == "state" and status["brightness"] == "state"
    d0 = local_model.exchange("0x73:f8:d0", "device")
    assert d0 is not None and d0.responses[1].latency.count == 35
    assert abs(d0.responses[1].latency.p50 * 1000 - 347.9) < 1.0  # PROTOCOL.md 10.1
    f0 = local_model.exchange("0x73:f8:f0", "device")
    assert f0 is not None and f0.responses[0].latency.count == 84
    # Queueing: the 0x7B waits longer with more commands outstanding, and the de-queued
    # service time is shorter than the raw latency.
    buckets = f0.by_outstanding
    assert buckets["0"].p50 < buckets["5+"].p50
    service = f0.responses[0].service
    assert service is not None and service.p50 < f0.responses[0].latency.p50


def test_mesh_info_request_gets_two_f9_results(local_model: DeviceModel) -> None:
    ex = local_model.exchange("0x73:f8:52", "device")
    assert ex is not None
    keys = [r.key for r in ex.responses]
    assert keys == ["0x7b", "0x73:f9:52", "0x73:f9:52"]
    assert len(ex.responses[2].template.exemplar) == 773


@pytest.mark.parametrize(("request_key", "role"), [("0xd3", "cloud"), ("0x73:f8:f0", "device")])
def test_sampling_reproduces_captured_quantiles(
    all_model: DeviceModel, request_key: str, role: str
) -> None:
    ex = all_model.exchange(request_key, role)
    assert ex is not None
    dist = ex.responses[0].latency
    rng = StratifiedUniform(random.Random(1234))
    draws = sorted(dist.sample(rng) for _ in range(10_000))
    vals, last = dist.values, len(dist.values) - 1
    for q in (0.5, 0.95, 0.99):
        got = draws[int(q * (len(draws) - 1))]
        want = dist.inverse_cdf(q)  # the draws' curve: the captured one, tied runs spread
        assert abs(got - want) <= 0.05 * want, (q, got, want)
        # and the captured percentile's: within the captured values around it (a tied run
        # moves the draws only inside the gap to its neighbours: f8 f0's p95 lies in the gap
        # 1.12 -> 1.75 s, before two pairs of acks flushed together)
        pos = q * last
        low, high = vals[max(0, math.floor(pos) - 1)], vals[min(last, math.ceil(pos) + 1)]
        assert low <= got <= high and low <= dist.quantile(q) <= high, (q, got, low, high)


def test_import_is_deterministic() -> None:
    files = [str(capture_path(REAL_CLOUD)), str(capture_path(LOCAL))]
    assert import_captures(files).dumps() == import_captures(files).dumps()


def test_save_load_round_trip(local_model: DeviceModel, tmp_path: Path) -> None:
    path = tmp_path / "m.msgpack"
    local_model.save(path)
    again = DeviceModel.load(path)
    assert again.dumps() == local_model.dumps()
    assert again.summary() == local_model.summary()


def test_corrupt_and_foreign_version_files(local_model: DeviceModel, tmp_path: Path) -> None:
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"\xc1garbage")
    with pytest.raises(ModelError) as err:
        DeviceModel.load(bad)
    assert err.value.reason == "corrupt" and str(bad) in str(err.value)
    obj = local_model.to_obj()
    obj["version"] = 99
    old = tmp_path / "old.msgpack"
    old.write_bytes(msgpack.packb(obj))
    with pytest.raises(ModelError) as err:
        DeviceModel.load(old)
    assert err.value.reason == "version"
    obj["version"] = 1
    del obj["exchanges"][0]["responses"][0]["latency"]
    broken = tmp_path / "broken.msgpack"
    broken.write_bytes(msgpack.packb(obj))
    with pytest.raises(ModelError, match="corrupt model content"):
        DeviceModel.load(broken)
    with pytest.raises(ModelError) as err:
        DeviceModel.load(tmp_path / "missing.msgpack")
    assert err.value.reason == "unreadable"


def test_default_model_is_up_to_date() -> None:
    from cyncsim.tools.build_default_model import build

    if not list(shared_captures_dir().glob("capture_*.txt")):
        pytest.skip(f"no captures in {shared_captures_dir()}")
    assert DEFAULT_MODEL_PATH.read_bytes() == build(shared_captures_dir()), (
        "captures/default_model.msgpack is stale: run `make model`"
    )


def test_devices_and_identities(all_model: DeviceModel) -> None:
    ids = {d.device_id for d in all_model.devices}
    assert bytes.fromhex("6457e7f2") in ids
    assert len(all_model.devices) == 26  # PROTOCOL.md 4.1: 26 distinct device ids
    for d in all_model.devices:
        assert len(d.device_id) == 4 and len(d.auth_code) == 16
        assert d.auth_code.startswith(b"1e07d")


def test_distribution_cap_keeps_tails() -> None:
    samples = [i / 10_000 for i in range(10_001)]
    d = Distribution.from_samples(samples, cap=101)
    assert d.count == 10_001 and len(d.values) == 101
    assert d.quantile(0.0) == 0.0 and d.quantile(1.0) == 1.0
    assert abs(d.quantile(0.99) - 0.99) < 1e-9
    with pytest.raises(ValueError):
        Distribution.from_obj({"values": [3.0, 1.0], "count": 2, "method": "measured"})


def test_stratified_draws_are_uniform_and_cover_every_slice() -> None:
    u = StratifiedUniform(random.Random(7), strata=100)
    draws = [u.random() for _ in range(1000)]
    assert all(0.0 <= x < 1.0 for x in draws)
    for block in range(10):
        slices = sorted(int(x * 100) for x in draws[block * 100 : (block + 1) * 100])
        assert slices == list(range(100))
    assert draws[:100] != sorted(draws[:100])  # random order inside a block


def test_connect_sequences(cloud_model: DeviceModel, local_model: DeviceModel) -> None:
    # Real cloud, mixed connections: only packets carrying the device's id are attributed.
    cloud = cloud_model.behaviour["cloud"].connect_scripts
    assert sum(n for n, _ in cloud) == 25  # one per hello
    with_status = [steps for _, steps in cloud if steps]
    assert with_status and all(k == "0x43" and 8.0 < d < 10.0 for k, d in with_status[0])
    # Local server, one answered connection: the strip bridge's burst of 0x83 status reports
    # follows the hello; its 0xAB answer to the server's 0xA3 is not part of the script.
    (n, steps), *_ = local_model.behaviour["local"].connect_scripts
    assert n == 1 and steps[0][0] == "0x83:fa:db"
    assert all(k != "0xab" for k, _ in steps)
    assert sum(1 for k, _ in steps if k == "0x83:fa:db") >= 42


def test_reconnect_and_status_cadence(local_model: DeviceModel) -> None:
    beh = local_model.behaviour["local"]
    # Rejected devices re-send their hello every 15.0 s (PROTOCOL.md 10.3).
    assert abs(beh.hello_retry.p50 - 15.0) < 0.2 and beh.hello_retry.count > 1000
    assert beh.status_interval.count > 100


def test_summary_of_a_capture_without_pings(tmp_path: Path) -> None:
    log = tmp_path / "short.txt"
    log.write_text(
        "2025-11-07T15:00:00.000000 DEV→CLOUD [conn:1] (12 bytes)\n430000000764 57e7f2010106\n\n"
        "2025-11-07T15:00:00.010000 CLOUD→DEV [conn:1] (8 bytes)\n4800000003010100\n\n",
        encoding="utf-8",
    )
    summary = import_captures([str(log)]).summary()
    assert summary["heartbeat_idle_s"] == {}
    assert [k["request"] for k in summary["kinds"]] == ["0x43"]


# PROTOCOL.md's byte ranges written out by hand (sections 2, 4.1, 4.3, 6, 7.1): an independent
# witness for fields_of, which derives the same ranges from the codec's field tables.
_SPEC_HEAD = [("type", "fixed", 0, 1), ("reserved", "fixed", 1, 3), ("length", "length", 3, 5)]
_SPEC_STATUS = [
    ("tick", "tick", 0, 2), ("flag", "fixed", 2, 3), ("node", "state", 3, 5),
    ("node2", "state", 5, 7), ("op", "fixed", 7, 10), ("connected", "state", 10, 11),
    ("on", "state", 11, 12), ("brightness", "state", 12, 13), ("color_temp", "state", 13, 14),
    ("rgb", "state", 14, 17), ("tail", "fixed", 17, 19),
]  # fmt: skip


def _spec_fields(pkt: CyncPacket) -> list[tuple[str, str, int, int]]:
    n = len(pkt)
    out = list(_SPEC_HEAD)
    if isinstance(pkt, HelloPacket):
        out += [("version", "fixed", 5, 6), ("device_id", "id", 6, 10), ("pad", "fixed", 10, 11),
                ("auth_len", "fixed", 11, 12), ("auth", "auth", 12, 28),
                ("tail", "fixed", 28, 31)]  # fmt: skip
    elif isinstance(pkt, AckPacket):
        out.append(("msg_id", "msg", 5, 8))
    elif isinstance(pkt, FramedPacket) and pkt.frame is not None:
        f = pkt.frame
        out += [("device_id", "id", 5, 9), ("msg_id", "msg", 9, 12), ("marker", "fixed", 12, 13),
                ("seq", "seq", 13, 17), ("kind", "fixed", 17, 18), ("opcode", "fixed", 18, 19),
                ("frame_length", "length", 19, 21)]  # fmt: skip
        if f.kind == 0xFA and f.opcode == 0xDB and len(f.data) == 19:
            out += [(nm, c, 21 + a, 21 + b) for nm, c, a, b in _SPEC_STATUS]
        elif n - 2 > 21:
            out.append(("data", "body", 21, n - 2))
        out += [("checksum", "checksum", n - 2, n - 1), ("end", "fixed", n - 1, n)]
    elif isinstance(pkt, IdPacket):
        out += [("device_id", "id", 5, 9), ("msg_id", "msg", 9, 12)]
        if n > 12:
            out.append(("body", "state" if pkt.type == 0x43 else "body", 12, n))
    elif pkt.type == 0xC8 and n == 16:
        out.append(("time", "clock", 5, 16))
    elif n > 5:
        out.append(("body", "body", 5, n))
    return out


@pytest.mark.parametrize(
    "name",
    ["capture_20251106_081101.txt", "capture_20251106_085753.txt", "capture_20251107_152132.txt"],
)
def test_fields_of_matches_the_protocol_for_every_captured_packet(name: str) -> None:
    result = read_capture(capture_path(name))
    packets = [fp.packet for flow in result.flows for fp in flow.packets]
    kinds: set[str] = set()
    for pkt in packets:
        got = fields_of(pkt)
        assert [(f.name, f.cls, f.start, f.end) for f in got] == _spec_fields(pkt)
        # Every byte exactly once, in order.
        assert [f.start for f in got[1:]] == [f.end for f in got[:-1]]
        assert (got[0].start, got[-1].end) == (0, len(pkt))
        kinds.add(type(pkt).__name__)
    if name != "capture_20251106_081101.txt":  # TLS ClientHellos only: no Cync packets
        assert {"HelloPacket", "AckPacket", "FramedPacket", "IdPacket"} <= kinds


def test_fields_of_built_and_malformed_packets() -> None:
    built = [
        build_hello(b"\x01\x02\x03\x04", b"0" * 16),
        build_report(
            b"\x01\x02\x03\x04", b"\x00\x01\x00", StatusReport(7, True, 50, 20, (1, 2, 3))
        ),
        build_time_reply(TimeReply(2025, 11, 6, 5, 2, 20, 40, -600)),
        build_simple(PacketType.PING),
        build_simple(PacketType.HELLO_ACK),
        decode_packet(bytes.fromhex("73 00 00 00 09 64 57 e7 f2 00 00 00 7e 7e"), strict=False),
        decode_packet(bytes.fromhex("c8 00 00 00 02 0d 07"), strict=False),
    ]
    for pkt in built:
        assert [(f.name, f.cls, f.start, f.end) for f in fields_of(pkt)] == _spec_fields(pkt)
