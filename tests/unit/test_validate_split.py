# The time split of `cyncsim validate` (replay/conformance/split.py): cut points per source,
# flows split with their identity, whole exchanges kept together (the cut moves past an
# exchange in flight), findings by time, and one clear error when a side would be empty.
from __future__ import annotations

import pytest

from cyncsim.replay.capture.model import CLOUD, DEVICE, CaptureResult, Finding, Flow, FlowPacket
from cyncsim.replay.conformance.split import cut_times, quiet_after, split_at, split_by_time
from cyncsim.replay.errors import CyncError
from cyncsim.replay.protocol import decode_packet
from tests.support import DEV, HELLO, HELLO_ACK, PING, PONG

T0 = 1_700_000_000.0


def _fp(ts: float, sender: str, raw: bytes) -> FlowPacket:
    return FlowPacket(T0 + ts, sender, decode_packet(raw), 0)  # type: ignore[arg-type]


def _flow(source: str = "a.txt", pong_after: float = 0.04, pings: int = 10) -> Flow:
    """A hello, then a ping every 10 s answered ``pong_after`` later."""
    packets = [_fp(0.0, DEVICE, HELLO), _fp(0.01, CLOUD, HELLO_ACK)]
    for k in range(1, pings + 1):
        packets += [_fp(10.0 * k, DEVICE, PING), _fp(10.0 * k + pong_after, CLOUD, PONG)]
    return Flow(f"{source}#conn:1/1", source, device_id=DEV, packets=packets)


def _result(*flows: Flow) -> CaptureResult:
    return CaptureResult(sorted({f.source for f in flows}), list(flows))


def test_cut_times_are_per_source_fraction_of_the_span() -> None:
    a, b = _flow("a.txt"), _flow("b.txt", pings=4)
    cuts = cut_times(_result(a, b), 0.5)
    assert cuts["a.txt"] == pytest.approx(T0 + 0.5 * 100.04)
    assert cuts["b.txt"] == pytest.approx(T0 + 0.5 * 40.04)
    with pytest.raises(CyncError, match="not between 0 and 1"):
        cut_times(_result(a), 1.0)


def test_split_at_keeps_flow_identity_and_carried_answers() -> None:
    flow = _flow()
    findings = [Finding("a.txt", flow.id, DEVICE, 0, 3, "gap", ts=T0 + 5.0),
                Finding("a.txt", flow.id, DEVICE, 0, 3, "gap", ts=T0 + 95.0),
                Finding("a.txt", flow.id, None, 0, 3, "tls")]  # fmt: skip
    result = CaptureResult(["a.txt"], [flow], findings)
    before, after = split_at(result, {"a.txt": T0 + 50.02}, {flow.id: {11}})
    assert [len(f.packets) for f in before.flows] == [12]  # hello, ack, 5 pings + 5 pongs
    assert [len(f.packets) for f in after.flows] == [10]
    late = after.flows[0]
    assert (late.id, late.source, late.device_id, late.exact) == (flow.id, "a.txt", DEV, True)
    assert late.packets[0].packet.type == 0xD3
    assert late.bytes_seen == {DEVICE: 5 * len(PING), CLOUD: 5 * len(PONG)}
    assert [f.reason for f in before.findings] == ["gap", "tls"]
    assert [f.ts for f in after.findings] == [T0 + 95.0]


def test_quiet_after_moves_past_chained_exchanges() -> None:
    assert quiet_after(5.0, [(1.0, 2.0), (6.0, 7.0)]) == 5.0
    moved = quiet_after(5.0, [(4.0, 6.0), (5.5, 8.0), (9.0, 10.0)])
    assert 8.0 < moved < 8.0 + 1e-9


def test_split_by_time_keeps_an_exchange_in_flight_in_training() -> None:
    # answers come 3 s after their ping: the cut at 50% (t = 51.5) falls inside the exchange
    # of the ping at t = 50; the ping's pong (t = 53) must stay with it in training.
    flow = _flow(pong_after=3.0)
    split = split_by_time(_result(flow), 0.5)
    train = [round(fp.ts - T0, 2) for f in split.training.flows for fp in f.packets]
    held = [round(fp.ts - T0, 2) for f in split.held_out.flows for fp in f.packets]
    assert train[-2:] == [50.0, 53.0]
    assert held[0] == 60.0 and len(held) == 10
    assert split.cuts["a.txt"] > T0 + 53.0


def test_split_by_time_refuses_an_empty_side() -> None:
    flow = _flow(pong_after=3.0, pings=2)  # the cut at t = 20.7 moves past the pong at t = 23
    with pytest.raises(CyncError, match="nothing is held out"):
        split_by_time(_result(flow), 0.9)
