# replay.session (pure): replayable units of a capture, which packets each side sent on its
# own, gap compression, and the controller side's rewriting to the target's ids and nodes.
from __future__ import annotations

import pytest

from cyncsim.replay.capture import CaptureResult, read_capture
from cyncsim.replay.conformance import Reference
from cyncsim.replay.payloads import PowerCommand, build_command, decode_command
from cyncsim.replay.protocol import DEVICE_ID, MSG_ID, FramedPacket, decode_packet
from cyncsim.replay.session import (
    ReplayError,
    build_plan,
    compress,
    node_map,
    replay_units,
    target_rewrite,
    with_counter,
)
from tests.support import capture_path

LOCAL = "capture_20251107_152132.txt"
TLS_ONLY = "capture_20251106_081101.txt"
BRIDGE = bytes.fromhex("6457e7f2")
Local = tuple[CaptureResult, Reference]


@pytest.fixture(scope="module")
def local() -> Local:
    result = read_capture(capture_path(LOCAL))
    return result, Reference.from_result(result)


def test_units_one_per_device_in_order() -> None:
    units = replay_units(capture_path(LOCAL))
    assert len(units) == 22
    assert units[0].device_id == BRIDGE
    assert units[0].name == "device-6457e7f2"
    assert len({u.device_id for u in units}) == 22


def test_tls_only_capture_has_no_units() -> None:
    assert replay_units(capture_path(TLS_ONLY)) == []


def test_compress_cuts_gaps_then_scales() -> None:
    assert compress([10.0, 10.5, 40.5, 41.0], None, 1.0) == [0.0, 0.5, 30.5, 31.0]
    assert compress([10.0, 10.5, 40.5, 41.0], 2.0, 1.0) == [0.0, 0.5, 2.5, 3.0]
    assert compress([10.0, 10.5, 40.5, 41.0], 2.0, 0.5) == [0.0, 0.25, 1.25, 1.5]
    assert compress([], 1.0, 1.0) == []


def test_devices_plan_holds_only_what_devices_sent_on_their_own(
    local: Local,
) -> None:
    result, ref = local
    plan = build_plan(result, ref, "devices", devices=[BRIDGE])
    (peer,) = plan.peers
    keys = {s.key for s in peer.steps}
    # answers to the controller come from the engine, never from the capture
    assert not {k for k in keys if k.startswith("0x73:f9") or k in ("0x7b", "0xab")}
    assert {"0x23", "0x43", "0xd3", "0x83:fa:db"} <= keys
    assert peer.auth_code == b"1e07d4c9dd546401"
    assert peer.mesh_node == 103 and peer.nodes[0] == 103
    ats = [s.at for s in peer.steps]
    assert ats == sorted(ats) and ats[0] == 0.0
    # 0x83 status answers to commands are answers (paired), the rest are the device's own
    n83 = sum(1 for f in result.flows if f.device_id == BRIDGE for fp in f.packets
              if fp.packet.type == 0x83)  # fmt: skip
    assert 0 < sum(1 for s in peer.steps if s.data[0] == 0x83) < n83


def test_controller_plan_holds_the_cloud_commands(local: Local) -> None:
    result, ref = local
    plan = build_plan(result, ref, "controller")
    (peer,) = plan.peers
    assert peer.device_id == BRIDGE
    keys = {s.key for s in peer.steps}
    assert keys == {"0xa3", "0x73:f8:52", "0x73:f8:af", "0x73:f8:d0", "0x73:f8:f0"}


def test_max_gap_shortens_and_counts(local: Local) -> None:
    result, ref = local
    full = build_plan(result, ref, "devices", devices=[BRIDGE])
    cut = build_plan(result, ref, "devices", devices=[BRIDGE], max_gap=0.5, time_scale=0.5)
    assert full.shortened == 0
    assert cut.shortened > 0 and cut.shortened_heartbeats > 0
    assert cut.duration < full.duration / 10


def test_bad_input(local: Local) -> None:
    result, ref = local
    with pytest.raises(ReplayError, match="no device 01020304"):
        build_plan(result, ref, "devices", devices=[bytes.fromhex("01020304")])
    with pytest.raises(ReplayError, match="max gap"):
        build_plan(result, ref, "devices", max_gap=0)
    with pytest.raises(ReplayError, match="time scale"):
        build_plan(result, ref, "devices", time_scale=-1)


def test_node_map() -> None:
    # the bridge goes to the target's own node, shared nodes stay, the rest by position
    assert node_map([103, 11, 44, 12], 103, [7, 11, 50]) == {103: 7, 11: 11, 44: 50}
    assert node_map([103, 11], 103, []) == {}


def test_target_rewrite_moves_id_and_node_and_fixes_checksum() -> None:
    cmd = build_command(BRIDGE, b"\x00\x00\x00", PowerCommand(3, 206, False)).encode()
    new_id = bytes.fromhex("0a0b0c0d")
    out = target_rewrite(cmd, new_id, {206: 9})
    pkt = decode_packet(out)  # strict: the checksum must be right
    assert isinstance(pkt, FramedPacket) and pkt.frame is not None
    assert out[DEVICE_ID] == new_id and out[MSG_ID] == cmd[MSG_ID]
    got = decode_command(pkt.frame)
    assert got == PowerCommand(3, 9, False)
    # a group address and an unmapped node keep their target; the id still moves
    group = build_command(BRIDGE, b"\0\0\0", PowerCommand(4, 0x800A, True)).encode()
    assert target_rewrite(group, new_id, {206: 9})[DEVICE_ID] == new_id
    assert target_rewrite(cmd, None, {206: 9}) == cmd


def test_with_counter_sets_bytes_9_10_only() -> None:
    cmd = build_command(BRIDGE, b"\x02\xfe\x00", PowerCommand(3, 206, False)).encode()
    out = with_counter(cmd, 0x0102)
    assert out[MSG_ID] == b"\x01\x02\x00"
    assert out[: MSG_ID.start] == cmd[: MSG_ID.start] and out[MSG_ID.stop :] == cmd[MSG_ID.stop :]
