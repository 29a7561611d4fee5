"""TCP stream reassembly (replay.capture.tcp): ordering, overlaps, gaps, connection life."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cyncsim.replay.capture.model import Finding, Flow
from cyncsim.replay.capture.tcp import ACK, FIN, NOT_FED_REASONS, PSH, RST, SYN, TcpReassembler
from cyncsim.replay.framer import PacketFramer
from tests.support import HELLO, PING, PONG, REPORT

DEV = ("10.0.0.5", 50123)
SRV = ("10.0.0.1", 23779)
PA = ACK | PSH

CMD = bytes.fromhex(
    "73 00 00 00 1f 64 57 e7 f2 00 00 00 7e 03 00 00 00 f8 d0 0d 00 03 00 00 00 00 ce 00 d0 11"
    " 02 00 00 00 91 7e"
)


def make(
    cloud_ports: tuple[int, ...] = (23779, 23778),
    max_pending: int = 1 << 20,
    max_hold: int = 1 << 16,
) -> tuple[TcpReassembler, list[Finding]]:
    findings: list[Finding] = []
    r = TcpReassembler(
        "test.pcap", findings, cloud_ports=cloud_ports, max_pending=max_pending, max_hold=max_hold
    )
    return r, findings


def pkts(flow: Flow, sender: str | None = None) -> list[bytes]:
    return [fp.packet.encode() for fp in flow.packets if sender is None or fp.sender == sender]


def reasons(findings: list[Finding]) -> list[str]:
    return [f.reason for f in findings]


def handshake(r: TcpReassembler, isn_c: int = 1000, isn_s: int = 9000, ts: float = 0.0) -> None:
    r.add(ts, DEV, SRV, isn_c, SYN)
    r.add(ts + 0.001, SRV, DEV, isn_s, SYN | ACK, ack=isn_c + 1)
    r.add(ts + 0.002, DEV, SRV, isn_c + 1, ACK, ack=isn_s + 1)


def accounting_ok(flows: list[Flow], findings: list[Finding]) -> bool:
    for flow in flows:
        for sender, seen in flow.bytes_seen.items():
            got = sum(len(fp.packet) for fp in flow.packets if fp.sender == sender)
            got += sum(
                f.length
                for f in findings
                if f.flow == flow.id
                and f.sender == sender
                and f.reason not in NOT_FED_REASONS
                and not f.reason.startswith("defect:")
            )
            if got != seen:
                return False
    return True


def test_in_order_connection_flow_id_endpoints_and_packets() -> None:
    r, findings = make()
    handshake(r)
    r.add(1.0, DEV, SRV, 1001, PA, HELLO + PING)
    r.add(1.1, SRV, DEV, 9001, PA, PONG)
    r.add(2.0, DEV, SRV, 1001 + 36, FIN | ACK)
    r.add(2.1, SRV, DEV, 9006, FIN | ACK)
    flows = r.finish()
    assert len(flows) == 1
    flow = flows[0]
    assert flow.id == "10.0.0.5:50123>10.0.0.1:23779#1"
    assert flow.endpoints == ("10.0.0.5:50123", "10.0.0.1:23779")
    assert flow.exact is True
    assert pkts(flow, "device") == [HELLO, PING]
    assert pkts(flow, "cloud") == [PONG]
    assert [fp.offset for fp in flow.packets] == [0, 31, 0]
    assert flow.bytes_seen == {"device": 36, "cloud": 5}
    assert flow.device_id == bytes.fromhex("6457e7f2")
    assert findings == []


def test_out_of_order_segments_are_delivered_in_order_with_completing_timestamp() -> None:
    r, findings = make()
    handshake(r)
    r.add(1.0, DEV, SRV, 1001 + 31 + 5, PA, REPORT)  # third
    r.add(1.1, DEV, SRV, 1001 + 31, PA, PING)  # second
    r.add(1.2, DEV, SRV, 1001, PA, HELLO)  # first: completes all three
    r.add(1.3, DEV, SRV, 1001 + 31 + 5 + 42, PA, PING)
    (flow,) = r.finish()
    assert pkts(flow) == [HELLO, PING, REPORT, PING]
    assert [fp.ts for fp in flow.packets] == [1.2, 1.2, 1.2, 1.3]
    assert findings == []


def test_exact_retransmission_is_ignored() -> None:
    r, findings = make()
    handshake(r)
    r.add(1.0, DEV, SRV, 1001, PA, HELLO)
    r.add(1.1, DEV, SRV, 1001, PA, HELLO)  # duplicate of delivered data
    r.add(1.2, DEV, SRV, 1032 + 5, PA, PING)
    r.add(1.3, DEV, SRV, 1032 + 5, PA, PING)  # duplicate of held data
    r.add(1.4, DEV, SRV, 1032, PA, PING)
    (flow,) = r.finish()
    assert pkts(flow) == [HELLO, PING, PING]
    assert findings == []
    assert flow.bytes_seen["device"] == 41


def test_partial_overlaps_with_same_bytes_are_merged() -> None:
    stream = HELLO + PING + REPORT + PING
    r, findings = make()
    handshake(r)
    r.add(1.0, DEV, SRV, 1001, PA, stream[:20])
    r.add(1.1, DEV, SRV, 1001 + 10, PA, stream[10:40])  # overlaps delivered bytes
    r.add(1.2, DEV, SRV, 1001 + 60, PA, stream[60:])  # ahead
    r.add(1.3, DEV, SRV, 1001 + 50, PA, stream[50:70])  # overlaps held bytes
    r.add(1.4, DEV, SRV, 1001 + 35, PA, stream[35:55])  # bridges the hole, overlaps both
    (flow,) = r.finish()
    assert b"".join(pkts(flow)) == stream
    assert findings == []
    assert flow.bytes_seen["device"] == len(stream)


def test_conflicting_retransmission_keeps_first_bytes_and_is_reported() -> None:
    r, findings = make()
    handshake(r)
    r.add(1.0, DEV, SRV, 1001, PA, HELLO)
    bad = bytearray(HELLO)
    bad[10] ^= 0xFF
    bad[12] ^= 0xFF
    r.add(1.1, DEV, SRV, 1001, PA, bytes(bad))  # conflicts with delivered bytes
    r.add(1.2, DEV, SRV, 1001 + 36, PA, PING)  # held
    r.add(1.3, DEV, SRV, 1001 + 36, PA, b"\xd3\x00\x00\x01\x00")  # conflicts with held bytes
    r.add(1.4, DEV, SRV, 1001 + 31, PA, PING)
    (flow,) = r.finish()
    assert pkts(flow) == [HELLO, PING, PING]
    conflicts = [f for f in findings if f.reason == "overlap_conflict"]
    assert [(f.sender, f.offset, f.length) for f in conflicts] == [
        ("device", 10, 3),
        ("device", 39, 1),
    ]
    assert all(f.flow == flow.id for f in conflicts)
    assert accounting_ok([flow], findings)


def test_sequence_wraparound() -> None:
    r, findings = make()
    isn = 2**32 - 20  # the hello crosses the wrap
    handshake(r, isn_c=isn, isn_s=2**32 - 1)
    r.add(1.0, DEV, SRV, isn + 1, PA, HELLO)
    r.add(1.1, DEV, SRV, (isn + 1 + 31 + 5) % 2**32, PA, REPORT)  # out of order after wrap
    r.add(1.2, DEV, SRV, (isn + 1 + 31) % 2**32, PA, PING)
    r.add(1.3, SRV, DEV, 0, PA, PONG)  # server ISN 2**32-1: first byte at seq 0
    (flow,) = r.finish()
    assert pkts(flow, "device") == [HELLO, PING, REPORT]
    assert pkts(flow, "cloud") == [PONG]
    assert findings == []


def test_capture_starting_mid_connection() -> None:
    r, findings = make()
    # no SYN: start at the first seen sequence number of each direction
    r.add(5.0, SRV, DEV, 777_000, PA, PONG)
    r.add(5.1, DEV, SRV, 123_456, PA, PING + REPORT[:10])
    r.add(5.2, DEV, SRV, 123_456 + 15, PA, REPORT[10:])
    (flow,) = r.finish()
    assert flow.id == "10.0.0.5:50123>10.0.0.1:23779#1"  # cloud port decides
    assert pkts(flow, "device") == [PING, REPORT]
    assert [fp.offset for fp in flow.packets if fp.sender == "device"] == [0, 5]
    assert pkts(flow, "cloud") == [PONG]
    assert findings == []


def test_gap_is_reported_with_exact_offset_and_length_and_later_bytes_decode() -> None:
    r, findings = make()
    handshake(r)
    r.add(1.0, DEV, SRV, 1001, PA, HELLO)
    # PING (5 bytes at offset 31) and the first 7 bytes of REPORT are never captured
    r.add(1.2, DEV, SRV, 1001 + 36 + 7, PA, REPORT[7:])
    r.add(1.3, DEV, SRV, 1001 + 36 + 42, PA, PING + CMD)
    (flow,) = r.finish()
    gaps = [f for f in findings if f.reason == "gap"]
    assert [(g.sender, g.offset, g.length) for g in gaps] == [("device", 31, 12)]
    assert pkts(flow) == [HELLO, PING, CMD]
    assert [fp.offset for fp in flow.packets] == [0, 78, 83]
    # the 35 bytes of REPORT after the hole are reported, not lost
    assert accounting_ok([flow], findings)
    assert sum(f.length for f in findings if f.reason == "not_cync") == 35


def test_gap_before_fin_is_reported() -> None:
    r, findings = make()
    handshake(r)
    r.add(1.0, DEV, SRV, 1001, PA, HELLO)
    r.add(1.1, DEV, SRV, 1001 + 31 + 5, FIN | ACK)  # the PING before the FIN was lost
    (flow,) = r.finish()
    gaps = [(f.offset, f.length) for f in findings if f.reason == "gap"]
    assert gaps == [(31, 5)]
    assert pkts(flow) == [HELLO]


def test_tail_loss_seen_through_peer_ack() -> None:
    r, findings = make()
    handshake(r)
    r.add(1.0, DEV, SRV, 1001, PA, HELLO)
    r.add(1.1, SRV, DEV, 9001, PA, PONG, ack=1001 + 31 + 42)  # acks a REPORT we never saw
    r.finish()
    gaps = [(f.sender, f.offset, f.length) for f in findings if f.reason == "gap"]
    assert gaps == [("device", 31, 42)]


def test_rst_then_new_syn_is_a_new_flow() -> None:
    r, findings = make()
    handshake(r)
    r.add(1.0, DEV, SRV, 1001, PA, HELLO)
    r.add(1.1, SRV, DEV, 9001, RST | ACK)
    r.add(1.2, DEV, SRV, 1032, PA, PING)  # late segment of the reset connection
    handshake(r, isn_c=50_000, isn_s=70_000, ts=2.0)
    r.add(2.1, DEV, SRV, 50_001, PA, HELLO)
    r.add(2.2, SRV, DEV, 70_001, PA, PONG)
    flows = r.finish()
    assert [f.id for f in flows] == [
        "10.0.0.5:50123>10.0.0.1:23779#1",
        "10.0.0.5:50123>10.0.0.1:23779#2",
    ]
    assert pkts(flows[0]) == [HELLO, PING]
    assert pkts(flows[1]) == [HELLO, PONG]
    assert findings == []


def test_new_syn_after_fin_is_a_new_flow_and_retransmitted_syn_is_not() -> None:
    r, findings = make()
    handshake(r)
    r.add(0.5, DEV, SRV, 1000, SYN)  # retransmitted SYN: same connection
    r.add(1.0, DEV, SRV, 1001, PA, PING)
    r.add(1.1, DEV, SRV, 1006, FIN | ACK)
    r.add(1.2, SRV, DEV, 9001, FIN | ACK, ack=1007)
    r.add(1.3, DEV, SRV, 1007, ACK, ack=9002)
    handshake(r, isn_c=4000, isn_s=8000, ts=3.0)
    r.add(3.1, DEV, SRV, 4001, PA, REPORT)
    flows = r.finish()
    assert [pkts(f) for f in flows] == [[PING], [REPORT]]
    assert flows[1].id.endswith("#2")
    assert findings == []


def test_device_side_from_hello_when_no_cloud_port() -> None:
    r, findings = make(cloud_ports=())
    a, b = ("192.168.1.2", 5000), ("192.168.1.9", 40001)
    # a (the SYN sender) is the server here; b sends the hello, so b is the device
    r.add(0.0, a, b, 100, SYN)
    r.add(0.1, b, a, 200, SYN | ACK, ack=101)
    r.add(0.2, a, b, 101, PA, b"\x28\x00\x00\x00\x02\x00\x00"[:3])
    r.add(0.3, b, a, 201, PA, HELLO[:3])  # the hello pattern is split over segments
    r.add(0.4, b, a, 204, PA, HELLO[3:])
    r.add(0.5, a, b, 104, PA, b"\x00\x02\x00\x00")
    (flow,) = r.finish()
    assert flow.id == "192.168.1.9:40001>192.168.1.2:5000#1"
    assert pkts(flow, "device") == [HELLO]
    assert pkts(flow, "cloud") == [b"\x28\x00\x00\x00\x02\x00\x00"]
    assert findings == []


def test_device_side_falls_back_to_syn_sender() -> None:
    r, _ = make(cloud_ports=())
    a, b = ("10.1.1.1", 6000), ("10.1.1.2", 7000)
    r.add(0.0, b, a, 5, SYN)
    r.add(0.1, a, b, 9, SYN | ACK, ack=6)
    r.add(0.2, a, b, 10, PA, PONG)
    r.add(0.3, b, a, 6, PA, PING)
    (flow,) = r.finish()
    assert flow.endpoints == ("10.1.1.2:7000", "10.1.1.1:6000")
    assert pkts(flow, "device") == [PING]


def test_ipv6_flow_id_uses_brackets() -> None:
    r, _ = make()
    r.add(0.0, ("fd00::5", 40000), ("fd00::1", 23779), 1, PA, PING)
    (flow,) = r.finish()
    assert flow.id == "[fd00::5]:40000>[fd00::1]:23779#1"


def test_buffered_out_of_order_data_is_bounded() -> None:
    r, findings = make(max_pending=100)
    handshake(r)
    r.add(1.0, DEV, SRV, 1001, PA, HELLO)
    base = 1001 + 31 + 5  # the PING at offset 31 is lost for good
    for i in range(10):
        r.add(2.0 + i, DEV, SRV, base + 42 * i, PA, REPORT)
    # the bound (100 bytes) was exceeded at the third report: the hole became a gap then
    gaps = [f for f in findings if f.reason == "gap"]
    assert [(g.offset, g.length, g.ts) for g in gaps] == [(31, 5, 4.0)]
    (flow,) = r.finish()
    assert pkts(flow) == [HELLO] + [REPORT] * 10
    assert [fp.ts for fp in flow.packets][1:4] == [4.0, 4.0, 4.0]
    assert [fp.ts for fp in flow.packets][4:] == [5.0 + i for i in range(7)]


def test_flows_without_payload_are_dropped_and_counted() -> None:
    r, findings = make()
    handshake(r)
    r.add(1.0, DEV, SRV, 1001, FIN | ACK)
    other = ("10.0.0.6", 50000)
    r.add(2.0, other, SRV, 1, PA, PING)
    flows = r.finish()
    assert [f.endpoints for f in flows] == [("10.0.0.6:50000", "10.0.0.1:23779")]
    (note,) = findings
    assert note.reason == "no_payload"
    assert note.flow == "" and note.sender is None
    assert "1 TCP connections" in note.detail and "10.0.0.5:50123" in note.detail


def test_bytes_before_the_first_seen_segment_are_reported() -> None:
    r, findings = make()
    r.add(1.0, DEV, SRV, 5000, PA, PING)  # mid-connection start at 5000
    r.add(1.1, DEV, SRV, 4990, PA, bytes(10) + PING)  # 10 older bytes + a retransmission
    r.add(1.2, DEV, SRV, 5005, PA, PING)
    (flow,) = r.finish()
    assert pkts(flow) == [PING, PING]
    (note,) = findings
    assert (note.reason, note.offset, note.length) == ("before_start", -10, 10)


def test_snap_length_cut_becomes_an_immediate_gap() -> None:
    r, findings = make()
    handshake(r)
    r.add(1.0, DEV, SRV, 1001, PA, HELLO[:20], missing=11)
    r.add(1.1, DEV, SRV, 1032, PA, PING)
    # the gap is declared at once, so the PING is not held back
    (flow,) = r.finish()
    assert [(f.reason, f.offset, f.length) for f in findings] == [
        ("gap", 20, 11),
        ("trailing_partial", 0, 20),
    ]
    assert pkts(flow) == [PING]
    assert flow.packets[0].ts == 1.1


def test_held_events_replayed_when_device_is_decided_by_bound() -> None:
    r, findings = make(cloud_ports=(), max_hold=20)
    a, b = ("10.2.0.1", 1111), ("10.2.0.2", 2222)
    r.add(0.0, a, b, 10, SYN)
    r.add(0.1, b, a, 20, SYN | ACK, ack=11)
    r.add(0.2, a, b, 11, PA, PING)
    r.add(0.3, a, b, 21, PA, PING)  # ahead of a gap of 5 bytes: held
    r.add(0.4, a, b, 11, PA, b"\xd4\x00\x00\x00\x00")  # conflict, before the decision
    r.add(0.5, b, a, 21, PA, REPORT)  # 47 bytes held > 20: the SYN sender a is the device
    (flow,) = r.finish()
    assert flow.endpoints == ("10.2.0.1:1111", "10.2.0.2:2222")
    assert [(f.reason, f.sender, f.offset) for f in findings] == [
        ("overlap_conflict", "device", 0),
        ("gap", "device", 5),
    ]
    assert all(f.flow == flow.id for f in findings)
    assert pkts(flow, "device") == [PING, PING]
    assert pkts(flow, "cloud") == [REPORT]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), isn=st.integers(0, 2**32 - 1))
def test_any_segmentation_reorder_and_duplication_gives_the_same_packets(
    seed: int, isn: int
) -> None:
    rng = random.Random(seed)
    stream = HELLO + (PING + REPORT + CMD) * 3 + PING
    cuts = sorted(rng.sample(range(1, len(stream)), rng.randrange(0, 30)))
    bounds = list(zip([0, *cuts], [*cuts, len(stream)], strict=True))
    segs = [(a, stream[a:b]) for a, b in bounds]
    segs += [segs[rng.randrange(len(segs))] for _ in range(rng.randrange(0, 6))]
    for _ in range(rng.randrange(0, 4)):  # partial overlaps with the right bytes
        a = rng.randrange(len(stream) - 1)
        b = rng.randrange(a + 1, len(stream) + 1)
        segs.append((a, stream[a:b]))
    rng.shuffle(segs)
    r, findings = make()
    r.add(0.0, DEV, SRV, isn, SYN)
    for i, (off, data) in enumerate(segs):
        r.add(1.0 + i, DEV, SRV, (isn + 1 + off) % 2**32, PA, data)
    (flow,) = r.finish()
    expected = [p.encode() for p in PacketFramer().feed(stream)]
    assert pkts(flow) == expected
    assert findings == []
    assert flow.bytes_seen["device"] == len(stream)
