# The pure replay engine without sockets: byte-exact answers to the real commands of
# PROTOCOL.md section 12, counters, queueing, duplicates, groups, odd packets, timers driven
# by a fake clock (plain numbers), determinism from a seed, and the cloud role.
from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

import pytest

from cyncsim import captures
from cyncsim.replay.engine import (
    DEFAULT_RECONNECT_S,
    Close,
    CloudEngine,
    DeviceEngine,
    DeviceState,
    ModelView,
    Relay,
    Send,
)
from cyncsim.replay.engine.view import ResponsePlan
from cyncsim.replay.model import DeviceModel, Distribution
from cyncsim.replay.payloads import (
    LightStateCommand,
    PowerCommand,
    build_command,
    decode_status_entries,
    decode_status_report,
    decode_time_reply,
    firmware_version,
)
from cyncsim.replay.protocol import FramedPacket, decode_packet, exchange_key
from tests.support import (
    ACK_7B,
    AUTH,
    CONTROL,
    CT_58,
    DEV,
    FW_DEVICE,
    FW_NETWORK,
    GROUP_BRI,
    GROUP_OFF,
    HELLO_ACK,
    MESH_ACK,
    MESH_REQ,
    POWER_OFF,
    POWER_ON,
    RESULT_52,
    RESULT_AF,
    RESULT_BRI,
    RESULT_CT,
    RESULT_OFF,
    RESULT_ON,
)

H = bytes.fromhex


@pytest.fixture(scope="module")
def model() -> DeviceModel:
    return captures.load_default_model()


def make(model: DeviceModel, **kw: object) -> DeviceEngine:
    args: dict[str, object] = {"mesh_node": 206, "seed": 11, "groups": (10, 16)}
    args.update(kw)
    return DeviceEngine(model, DEV, AUTH, **args)  # type: ignore[arg-type]


def connected(model: DeviceModel, **kw: object) -> DeviceEngine:
    e = make(model, **kw)
    e.connection_made(0.0)
    e.receive(HELLO_ACK, 0.001)
    return e


def sends(actions: Sequence[object]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def by_key(actions: Sequence[object], key: str) -> list[bytes]:
    return [a.data for a in sends(actions) if a.key == key]


# ---------------------------------------------------------------------- byte-exact answers
def test_power_commands_answered_byte_for_byte(model: DeviceModel) -> None:
    e = connected(model)
    e.counters["device:0x73"] = 5
    first = e.receive(POWER_OFF, 1.0)
    assert by_key(first, "0x7b") == [ACK_7B]
    assert by_key(first, "0x73:f9:d0") == [RESULT_OFF]
    assert e.state.on is False
    second = e.receive(POWER_ON, 2.0)
    assert by_key(second, "0x7b") == [ACK_7B]
    assert by_key(second, "0x73:f9:d0") == [RESULT_ON]  # counter +1, sequence byte copied
    assert e.state.on is True
    assert [a.key for a in sends(second)] == ["0x7b", "0x73:f9:d0", "0x83:fa:db"]


def test_light_state_commands_byte_for_byte(model: DeviceModel) -> None:
    e = connected(model)
    e.counters["device:0x73"] = 2
    got = e.receive(GROUP_BRI, 1.0)  # group 0x10 = 16, a member
    assert by_key(got, "0x7b") == [ACK_7B]
    assert by_key(got, "0x73:f9:f0") == [RESULT_BRI]
    assert e.state.brightness == 100
    e.counters["device:0x73"] = 7
    got = e.receive(CT_58, 2.0)
    assert by_key(got, "0x73:f9:f0") == [RESULT_CT]
    assert (e.state.brightness, e.state.color_temp) == (100, 58)  # 0xff kept brightness


def test_status_report_carries_new_state(model: DeviceModel) -> None:
    e = connected(model, state=DeviceState(on=True, brightness=40, color_temp=20))
    e.counters["device:0x83"] = 0x2A
    (report,) = by_key(e.receive(POWER_OFF, 1.0), "0x83:fa:db")
    pkt = decode_packet(report)  # strict: checksum and lengths right
    status = decode_status_report(pkt)
    assert status is not None
    assert (status.node_id, status.on, status.brightness, status.color_temp) == (206, False, 40, 20)
    assert isinstance(pkt, FramedPacket) and pkt.msg_id == b"\x00\x2a\x00"
    assert pkt.device_id == DEV


def test_mesh_info_and_mesh_ack(model: DeviceModel) -> None:
    peer = DeviceState(on=True, brightness=7, color_temp=3, rgb=(1, 2, 3))
    e = connected(model, mesh={0x0B: peer})
    e.counters["device:0x73"] = 0
    got = e.receive(MESH_REQ, 1.0)
    assert [a.key for a in sends(got)] == ["0x7b", "0x73:f9:52", "0x73:f9:52"]
    small, table = by_key(got, "0x73:f9:52")
    assert small == RESULT_52
    pkt = decode_packet(table)  # strict decode: lengths and checksum recomputed
    assert isinstance(pkt, FramedPacket) and pkt.frame is not None
    data = pkt.frame.data
    assert data[0] == data[4] == 2 and len(data) == 6 + 2 * 24  # own node + one peer
    own, other = data[6:30], data[30:54]
    assert own[0:2] == (206).to_bytes(2, "little") and own[2] == 0x51  # bridge record shape
    assert other[0:2] == b"\x0b\x00" and (other[8], other[12], other[16]) == (1, 7, 3)
    assert other[20:23] == b"\x01\x02\x03"
    e.counters["device:0x73"] = 4
    got = e.receive(MESH_ACK, 2.0)
    assert by_key(got, "0x73:f9:af") == [RESULT_AF]


def test_control_gets_1024_byte_answer(model: DeviceModel) -> None:
    (ab,) = by_key(connected(model).receive(CONTROL, 1.0), "0xab")
    assert len(ab) == 1024 and exchange_key(ab) == exchange_key(CONTROL) and b"xlink_dev" in ab


def test_rendered_answers_equal_their_reencode(model: DeviceModel) -> None:
    """Rendering fixes lengths and the frame checksum as the codec does: every learned
    template's output equals its non-strict decode re-encoded with the checksum computed
    (the f9 52 mesh table grows and shrinks with the mesh)."""
    from cyncsim.replay.engine.templates import RenderContext

    checked = 0
    for nodes in (1, 3, 40):
        mesh = {n: DeviceState(on=n % 2 == 1, brightness=n % 101) for n in range(206, 206 + nodes)}
        ctx = RenderContext(DEV, AUTH, {}, 206, mesh[206], mesh, wall=1.7e9)
        for role in ("device", "cloud"):
            for variant in model.variants:
                view = ModelView.get(model, role, variant)
                for request in sorted({ex.request for ex in model.exchanges}):
                    for plan in view.plans(request) or ():
                        for req in (None, POWER_OFF, MESH_REQ, CONTROL):
                            data = plan.template.render(req, ctx)
                            pkt = decode_packet(data, strict=False)
                            if isinstance(pkt, FramedPacket) and pkt.frame is not None:
                                pkt.frame.checksum = None
                            assert pkt.encode() == data, (role, variant, plan.key)
                            checked += 1
    assert checked > 100


def test_firmware_reports_match_the_captured_bytes() -> None:
    from cyncsim.replay.engine.state import firmware_report

    dev = H("32 5d 53 17")
    assert firmware_report(dev, b"\x00\x01\x00", "network", "0") == FW_NETWORK
    assert firmware_report(dev, b"\x00\x02\x00", "device", "11158") == FW_DEVICE
    assert firmware_version(decode_packet(FW_DEVICE)) == ("device", "11158")


# ---------------------------------------------------------------------- counters
def test_counters_independent_and_survive_reconnects(model: DeviceModel) -> None:
    e = connected(model)
    e.counters.update({"device:0x73": 0x0120, "device:0x83": 0x0300})
    got = e.receive(POWER_OFF, 1.0)
    result = by_key(got, "0x73:f9:d0")[0]
    report = by_key(got, "0x83:fa:db")[0]
    assert result[9:12] == b"\x01\x20\x00" and report[9:12] == b"\x03\x00\x00"
    e.connection_lost(2.0)
    e.connection_made(3.0)
    e.receive(HELLO_ACK, 3.1)
    got = e.receive(POWER_ON, 4.0)
    assert by_key(got, "0x73:f9:d0")[0][9:12] == b"\x01\x21\x00"  # +1 across the reconnect
    assert by_key(got, "0x83:fa:db")[0][9:12] == b"\x03\x01\x00"


def test_counters_advance_by_one_in_send_order(model: DeviceModel) -> None:
    # f9 d0 and f9 f0 queue separately, 0x83 reports come from commands and set_state: on
    # the wire each counter must still step by one (found by `cyncsim diff`).
    e = connected(model, groups=(16,))
    out: list[Send] = []
    for i in range(30):
        cmd = POWER_ON if i % 3 == 0 else CT_58
        cmd = cmd[:9] + bytes((0, i + 1, 0)) + cmd[12:13] + bytes((i + 1,)) + cmd[14:]
        cmd = cmd[:-2] + bytes((sum(cmd[18:-2]) & 0xFF, 0x7E))
        out += sends(e.receive(cmd, 1.0 + i * 0.01))
        if i % 7 == 0:
            out += sends(e.set_state(1.0 + i * 0.01, brightness=i))
    out.sort(key=lambda a: a.at)  # stable: equal times keep the engine's order
    for ptype in (0x73, 0x83):
        seen = [int.from_bytes(a.data[9:11], "big") for a in out if a.data[0] == ptype]
        assert len(seen) > 10 and seen == list(range(seen[0], seen[0] + len(seen)))


# ---------------------------------------------------------------------- queueing
def _burst(n: int, start_ctr: int = 1) -> list[bytes]:
    out = []
    for i in range(n):
        cmd = LightStateCommand((start_ctr + i) & 0xFF, 206, brightness=i)
        out.append(build_command(DEV, bytes((0, i + 1, 0)), cmd).encode())
    return out


def test_burst_is_worked_through_one_after_another(model: DeviceModel) -> None:
    e = connected(model)
    acks = [by_key(e.receive(cmd, 10.0), "0x7b") for cmd in _burst(20)]
    assert all(len(a) == 1 for a in acks)
    e2 = connected(model)
    times = [next(a.at for a in sends(e2.receive(cmd, 10.0)) if a.key == "0x7b")
             for cmd in _burst(20)]  # fmt: skip
    delays = [t - 10.0 for t in times]
    assert delays == sorted(delays)  # FIFO: no ack overtakes an earlier one
    assert statistics.median(delays[-5:]) > 5 * statistics.median(delays[:5])
    # Each command's own responses keep their order: 7B, then f9, then the status.
    e3 = connected(model)
    for cmd in _burst(5):
        ts = [a.at for a in sends(e3.receive(cmd, 20.0))]
        assert ts == sorted(ts)


def test_time_scale_multiplies_delays(model: DeviceModel) -> None:
    slow = [a.at for a in sends(connected(model, time_scale=1.0).receive(POWER_OFF, 1.0))]
    fast = [a.at for a in sends(connected(model, time_scale=0.01).receive(POWER_OFF, 1.0))]
    assert [round((f - 1.0) * 100, 9) for f in fast] == [round(s - 1.0, 9) for s in slow]
    zero = sends(connected(model, time_scale=0.0).receive(POWER_OFF, 1.0))
    assert all(a.at == 1.0 for a in zero)


# ---------------------------------------------------------------------- duplicates, groups
def test_duplicate_acked_again_but_applied_once(model: DeviceModel) -> None:
    e = connected(model)
    first = e.receive(POWER_ON, 1.0)
    again = e.receive(POWER_ON, 1.5)
    assert [a.key for a in sends(first)] == ["0x7b", "0x73:f9:d0", "0x83:fa:db"]
    assert [a.key for a in sends(again)] == ["0x7b"]
    assert by_key(again, "0x7b") == [ACK_7B]
    assert e.state.toggle_count == 1 and e.stats["duplicates"] == 1
    # Same message id with another sequence byte is a new command.
    other = POWER_ON[:13] + b"\x05" + POWER_ON[14:]
    assert [a.key for a in sends(e.receive(other, 2.0))][:2] == ["0x7b", "0x73:f9:d0"]
    assert e.state.toggle_count == 2


def test_group_commands_reach_members_only(model: DeviceModel) -> None:
    member = connected(model, groups=(10,), state=DeviceState(on=True))
    got = member.receive(GROUP_OFF, 1.0)
    assert member.state.on is False and member.state.toggle_count == 1
    assert "0x83:fa:db" in [a.key for a in sends(got)]
    relays = [a for a in got if isinstance(a, Relay)]
    assert [(r.target, r.command) for r in relays] == [(0x800A, PowerCommand(9, 0x800A, False))]
    outsider = connected(model, groups=(3,), state=DeviceState(on=True))
    got = outsider.receive(GROUP_OFF, 1.0)
    assert outsider.state.on is True and outsider.state.toggle_count == 0
    assert [a.key for a in sends(got)] == ["0x7b", "0x73:f9:d0"]  # acked and done, no status
    other_node = connected(model, mesh_node=5)
    got = other_node.receive(POWER_OFF, 1.0)
    assert [a.target for a in got if isinstance(a, Relay)] == [206]
    assert other_node.state.toggle_count == 0


def test_rgb_mode_and_relayed_commands(model: DeviceModel) -> None:
    e = connected(model)
    rgb = LightStateCommand(9, 206, brightness=0xFF, color_temp=0xFE, rgb=(10, 20, 30))
    e.receive(build_command(DEV, b"\x00\x09\x00", rgb).encode(), 1.0)
    assert (e.state.color_temp, e.state.rgb) == (0xFE, (10, 20, 30))
    keep = LightStateCommand(10, 206, brightness=0xFF, color_temp=0xFF, rgb=(1, 1, 1))
    e.receive(build_command(DEV, b"\x00\x0a\x00", keep).encode(), 2.0)
    assert (e.state.color_temp, e.state.rgb) == (0xFE, (10, 20, 30))  # 0xff: unchanged
    got = e.apply_command(PowerCommand(1, 206, True), 3.0)
    assert e.state.on is True and [a.key for a in sends(got)] == ["0x83:fa:db"]
    assert e.apply_command(PowerCommand(1, 99, False), 3.0) == [] and e.state.on is True


# ---------------------------------------------------------------------- odd packets
def test_unknown_opcode_foreign_id_and_malformed_still_acked(model: DeviceModel) -> None:
    e = connected(model)
    effect = H("73 00 00 00 1a 64 57 e7 f2 00 11 00 7e 22 00 00 00 f8 e2 08 00"
               " e2 11 02 07 01 01 02 00 00 7e")  # fmt: skip
    effect = effect[:-2] + bytes((sum(effect[18:-2]) & 0xFF,)) + b"\x7e"
    got = sends(e.receive(effect, 1.0))
    assert [(a.key, a.data) for a in got] == [("0x7b", ACK_7B[:9] + b"\x00\x11\x00")]
    foreign = H("45 88 0f 3a")
    cmd = POWER_OFF[:5] + foreign + b"\x00\x10\x00" + POWER_OFF[12:]
    got = sends(e.receive(cmd, 2.0))
    assert [a.data for a in got] == [H("7b 00 00 00 07 45 88 0f 3a 00 10 00")]
    # The MITM's crafted injection (extra 00 at byte 12): malformed frame, ack only.
    crafted = H("73 00 00 00 1f 45 88 0f 3a 00 10 00 00 7e 10 01 00 00 f8 8e 0c 00 10 01 00"
                " 00 00 50 00 f7 11 02 01 01 07 7e")  # fmt: skip
    got = sends(e.receive(crafted, 3.0))
    assert [a.data for a in got] == [H("7b 00 00 00 07 45 88 0f 3a 00 10 00")]
    bad_sum = POWER_ON[:-2] + b"\x00\x7e"
    assert [a.key for a in sends(e.receive(bad_sum, 4.0))] == ["0x7b"]
    assert e.state.toggle_count == 0
    assert e.stats["foreign"] == 1 and e.stats["malformed"] == 2 and e.stats["unknown"] == 1
    assert e.receive(b"\x73\x00", 5.0) == [] and e.receive(H("73 00 00 00 02 00 00"), 5.0) == []


def test_acks_leave_in_arrival_order_even_for_unknown_commands(model: DeviceModel) -> None:
    """The general 0x7B (an unknown opcode) has no learned service time, a known command's
    0x7B has one: a device still acks the two in the order they came, whatever the seed."""
    effect = H("73 00 00 00 1a 64 57 e7 f2 00 11 00 7e 22 00 00 00 f8 e2 08 00"
               " e2 11 02 07 01 01 02 00 00 7e")  # fmt: skip
    effect = effect[:-2] + bytes((sum(effect[18:-2]) & 0xFF,)) + b"\x7e"
    for seed in range(40):
        e = connected(model, seed=seed)
        first = sends(e.receive(effect, 1.0)) + sends(e.receive(POWER_OFF, 1.0))
        e = connected(model, seed=seed)
        second = sends(e.receive(POWER_OFF, 1.0)) + sends(e.receive(effect, 1.0))
        for got in (first, second):
            acks = [a for a in got if a.key == "0x7b"]
            assert len(acks) == 2 and acks[0].at <= acks[1].at, (seed, acks)


# ---------------------------------------------------------------------- timers
def test_hello_then_connect_script_and_firmware(model: DeviceModel) -> None:
    e = make(model, firmware={"network": "0", "device": "11158"}, time_scale=0.01)
    (hello,) = sends(e.connection_made(100.0))
    assert hello.key == "0x23" and hello.at == 100.0
    assert hello.data[6:10] == DEV and hello.data[12:28] == AUTH
    assert e.poll(100.0) == []  # nothing before the 0x28
    got = sends(e.receive(HELLO_ACK, 100.05))
    fw = [firmware_version(decode_packet(a.data)) for a in got if a.key == "0x83:fa:00"]
    assert fw == [("network", "0"), ("device", "11158")]
    assert [a.data[9:12] for a in got if a.key == "0x83:fa:00"] == [b"\0\1\0", b"\0\2\0"]


def _without_status_cadence(model: DeviceModel) -> DeviceModel:
    """The model with no spontaneous 0x43 cadence, so that the heartbeat is the only timer
    (the socat logs give the cloud variant one: their devices' own 0x43s are traffic too)."""
    behaviour = {
        v: dataclasses.replace(b, status_interval=Distribution())
        for v, b in model.behaviour.items()
    }
    return dataclasses.replace(model, behaviour=behaviour)


def test_heartbeat_after_learned_idle_and_rearmed_by_traffic(model: DeviceModel) -> None:
    model = _without_status_cadence(model)
    view = ModelView.get(model, "device")
    assert view.heartbeat is not None
    lo, hi = view.heartbeat.values[0] * 0.01, view.heartbeat.values[-1] * 0.01
    e = connected(model, time_scale=0.01)
    t = e.next_deadline()
    while t < 1.0:  # run the connect script out
        e.poll(t)
        t = e.next_deadline()
    start = e.last_traffic
    due = e.next_deadline()
    assert lo - 1e-9 <= due - start <= hi + 1e-9
    assert by_key(e.poll(due - 1e-6), "0xd3") == []  # never early
    e.receive(H("d8 00 00 00 00"), due - 0.05)  # traffic re-arms the idle timer
    assert by_key(e.poll(due), "0xd3") == []
    due2 = e.next_deadline()
    assert due2 > due
    assert by_key(e.poll(due2), "0xd3") == [H("d3 00 00 00 00")]
    nxt = e.next_deadline()
    assert lo - 1e-9 <= nxt - due2 <= hi + 1e-9


def test_status_reports_at_the_learned_cadence(model: DeviceModel) -> None:
    view = ModelView.get(model, "device", "local")
    assert view.status_interval is not None
    lo, hi = view.status_interval.values[0] * 0.01, view.status_interval.values[-1] * 0.01
    e = connected(model, variant="local", time_scale=0.01, seed=3)
    last, gaps = 0.001, list[float]()
    while len(gaps) < 20:
        t = e.next_deadline()
        for a in sends(e.poll(t)):
            if a.key == "0x43" and a.at > 0.2:  # after the connect script's own 0x43s
                gaps.append(a.at - last)
            if a.key == "0x43":
                last = a.at
    assert all(lo - 1e-9 <= g <= hi + 1e-9 for g in gaps[1:])
    assert len(set(gaps[1:])) > 5  # sampled, not a constant


def test_hello_retry_and_give_up(model: DeviceModel) -> None:
    e = make(model, time_scale=0.01, hello_attempts=2)
    e.connection_made(0.0)
    due = e.next_deadline()
    view = ModelView.get(model, "device")
    assert view.reconnect is not None
    assert view.reconnect.values[0] * 0.01 - 1e-9 <= due <= view.reconnect.values[-1] * 0.01
    got = e.poll(due)
    assert by_key(got, "0x23") and e.hellos == 2
    got = e.poll(e.next_deadline())
    assert [type(a) for a in got] == [Close]
    assert e.reconnect_delay() == pytest.approx(0.25 * 0.01)  # after a close (PROTOCOL 10.3)


def test_spontaneous_traffic_off_at_time_scale_zero(model: DeviceModel) -> None:
    e = connected(model, time_scale=0.0)
    e.poll(0.001)
    assert e.next_deadline() == float("inf")


def test_set_state_and_status_broadcast(model: DeviceModel) -> None:
    e = make(model)
    assert e.set_state(1.0, on=True) == []  # not connected: state changes, nothing is sent
    assert e.state.on and e.state.toggle_count == 1
    e.connection_made(2.0)
    (rep,) = sends(e.set_state(3.0, brightness=33, rgb=(9, 8, 7)))
    status = decode_status_report(decode_packet(rep.data))
    assert status is not None and (status.brightness, status.color_temp, status.rgb) == (
        33, 0xFE, (9, 8, 7))  # fmt: skip
    with pytest.raises(ValueError, match="brightness"):
        e.set_state(4.0, brightness=101)
    with pytest.raises(ValueError, match="color_temp"):
        e.set_state(4.0, color_temp=150)
    (b,) = sends(e.status_broadcast(5.0))
    assert decode_status_report(decode_packet(b.data)) == status


def test_status_0x43_entries(model: DeviceModel) -> None:
    from cyncsim.replay.engine.state import status_packet

    st = DeviceState(on=True, brightness=10, color_temp=10, rgb=(255, 255, 255))
    (entry,) = decode_status_entries(decode_packet(status_packet(H("38e8cf46"), 0xEE, st)))
    assert status_packet(H("38e8cf46"), 0xEE, st) == H(
        "43 00 00 00 1a 38 e8 cf 46 01 01 06 05 00 10 ee 01 0a 0a ff ff ff 01 00 ee 00 00 00 00"
        " 00 00")  # fmt: skip
    assert entry.node_id == 0xEE


# ---------------------------------------------------------------------- determinism
def _script(e: DeviceEngine) -> list[tuple[float, bytes]]:
    out = [(a.at, a.data) for a in sends(e.connection_made(0.0))]
    out += [(a.at, a.data) for a in sends(e.receive(HELLO_ACK, 0.01))]
    for i, cmd in enumerate(_burst(10)):
        out += [(a.at, a.data) for a in sends(e.receive(cmd, 1.0 + i * 0.01))]
    t = e.next_deadline()
    for _ in range(5):
        out += [(a.at, a.data) for a in sends(e.poll(t))]
        t = e.next_deadline()
    return out


def test_same_seed_same_behaviour(model: DeviceModel) -> None:
    a, b = _script(make(model, seed=5)), _script(make(model, seed=5))
    assert a == b
    assert _script(make(model, seed=6)) != a


# ---------------------------------------------------------------------- cloud role
def test_cloud_answers_in_order_with_learned_templates(model: DeviceModel) -> None:
    c = CloudEngine(model, seed=1, wall_offset=1_762_410_040.0 - 10.0)  # variant "cloud"
    hello = H("23 00 00 00 1a 03 38 e8 cf 46 00 10 31 65 30 37 64 38 63 65 30 61 36 31 37 61"
              " 33 37 00 00 3c")  # fmt: skip
    (ack,) = sends(c.receive(hello, 10.0))
    assert ack.data == HELLO_ACK and ack.at > 10.0 and c.device_id == H("38e8cf46")
    (t,) = sends(c.receive(H("c3 00 00 00 01 0c"), 10.0))
    reply = decode_time_reply(decode_packet(t.data))
    assert reply is not None  # 2025-11-06 06:20:40 UTC in the cloud's -06:00
    assert (reply.year, reply.month, reply.day, reply.weekday) == (2025, 11, 6, 5)
    assert (reply.hour, reply.minute, reply.second, reply.utc_offset_hhmm) == (0, 20, 40, -600)
    pongs = [sends(c.receive(H("d3 00 00 00 00"), 11.0 + i * 1e-4))[0].at for i in range(20)]
    assert pongs == sorted(pongs)  # matched by order: never reordered
    report = H("83 00 00 00 25 38 e8 cf 46 00 09 00 7e 1f 00 00 00 fa db 13 00 87 25 11 ee 00"
               " ee 00 db 11 02 01 01 0a 0a ff ff ff 00 00 88 7e")  # fmt: skip
    assert [a.data for a in sends(c.receive(report, 12.0))] == [H("88 00 00 00 03 00 09 00")]
    status = H("43 00 00 00 07 38 e8 cf 46 01 01 06")
    assert [a.data for a in sends(c.receive(status, 12.0))] == [H("48 00 00 00 03 01 01 00")]
    unexpected = H("7b 00 00 00 07 45 88 0f 3a 00 10 00")
    assert [a.data for a in sends(c.receive(unexpected, 13.0))] == [
        H("78 00 00 00 07 45 88 0f 3a 00 10 05")]  # fmt: skip
    cmd = c.command(PowerCommand(0, 206, True), 14.0)
    assert cmd.data[5:9] == H("38e8cf46") and decode_packet(cmd.data).type == 0x73
    assert sends(c.receive(b"\x7b\x00\x00\x00\x07" + exchange_key(cmd.data), 14.1)) == []


def test_cloud_local_variant_has_no_0x78(model: DeviceModel) -> None:
    c = CloudEngine(model, variant="local", seed=1)
    assert sends(c.receive(H("7b 00 00 00 07 45 88 0f 3a 00 10 00"), 1.0)) == []
    (pong,) = sends(c.receive(H("d3 00 00 00 00"), 1.0))
    assert pong.data == H("d8 00 00 00 00")


def test_model_errors(model: DeviceModel) -> None:
    from cyncsim.replay.errors import ModelError

    with pytest.raises(ModelError, match="variant"):
        make(model, variant="nope")
    with pytest.raises(ModelError, match="0x7b"):
        DeviceEngine(DeviceModel(behaviour=model.behaviour), DEV, AUTH, mesh_node=1, seed=1)
    with pytest.raises(ValueError, match="time_scale"):
        make(model, time_scale=-1.0)
    assert DEFAULT_RECONNECT_S == 15.0


def test_delays_are_stratified_per_answer_key(model: DeviceModel) -> None:
    """Each answer key gets its own stratified run: 100 draws of one key cover the 100
    slices of [0, 1) once each, even with another key's draws interleaved (as a toggle
    takes a 0x7B, an f9 and a 0x83 draw in turn)."""
    e = make(model)
    unit = Distribution.from_samples([0.0, 1.0])  # quantile(u) == u: the draw itself
    tpl = ModelView.get(model, "device").split("0x73:f8:d0").acks[0].template
    plans = [ResponsePlan(key, tpl, unit, 1.0) for key in ("a", "b", "c")]
    draws: dict[str, list[float]] = {p.key: [] for p in plans}
    for _ in range(100):
        for p in plans:
            draws[p.key].append(e.sample_delay(p))
    for key, values in draws.items():
        assert sorted(int(v * 100) for v in values) == list(range(100)), key
    # the same seed and the same order of requests give the same draws
    again = make(model)
    replayed = [again.sample_delay(p) for _ in range(3) for p in plans]
    assert replayed[0::3] == draws["a"][:3] and replayed[2::3] == draws["c"][:3]
