"""Indexed pairing: a response pairs with its own request among many pending, FIFO per kind."""

from __future__ import annotations

from cyncsim.replay.capture.model import CLOUD, DEVICE, FlowPacket
from cyncsim.replay.describe import request_key
from cyncsim.replay.model._pairing import FlowPairer, Pending
from cyncsim.replay.payloads import StatusReport, build_report
from cyncsim.replay.protocol import AckPacket, CyncPacket, GenericPacket

Pair = tuple[float, float, str, int]


def _pairer(exact: bool = True) -> tuple[FlowPairer, list[Pair], dict[tuple[str, str], int]]:
    pairs: list[Pair] = []
    ambiguous: dict[tuple[str, str], int] = {}

    def on_pair(req: Pending, resp: FlowPacket, rk: str, occ: int, depth: int) -> None:
        pairs.append((req.fp.ts, resp.ts, rk, depth))

    return FlowPairer(exact, on_pair, ambiguous), pairs, ambiguous


def _feed(p: FlowPairer, ts: float, sender: str, pkt: CyncPacket) -> None:
    p.feed(FlowPacket(ts, sender, pkt, 0), request_key(pkt))  # type: ignore[arg-type]


def _report(msg: int) -> CyncPacket:  # a 0x83 fa db 13 status, message id ``msg``
    status = StatusReport(msg % 200, True, 100, 50, (0, 0, 0))
    return build_report(b"\x01\x02\x03\x04", msg.to_bytes(3, "big"), status)


def test_ack_pairs_with_its_own_report_among_many_pending() -> None:
    p, pairs, _ = _pairer()
    for i in range(500):
        _feed(p, i * 0.001, DEVICE, _report(i))
    # The cloud acks report 321 first, then 7: each by the message id it echoes.
    _feed(p, 0.6, CLOUD, AckPacket(0x88, msg_id=(321).to_bytes(3, "big")))
    _feed(p, 0.7, CLOUD, AckPacket(0x88, msg_id=(7).to_bytes(3, "big")))
    assert [(round(a, 3), b, rk) for a, b, rk, _ in pairs] == [
        (0.321, 0.6, "0x88"),
        (0.007, 0.7, "0x88"),
    ]
    assert pairs[0][3] == 321  # requests still waiting when report 321 arrived


def test_fifo_per_kind_where_nothing_is_echoed() -> None:
    p, pairs, _ = _pairer()
    ping, pong = GenericPacket(0xD3), GenericPacket(0xD8)
    _feed(p, 0.0, DEVICE, ping)
    _feed(p, 0.1, DEVICE, ping)
    _feed(p, 0.2, DEVICE, GenericPacket(0xC3))  # another kind waits apart
    _feed(p, 0.3, CLOUD, pong)
    _feed(p, 0.4, CLOUD, pong)
    _feed(p, 0.5, CLOUD, pong)  # nothing left to answer
    assert [(a, b) for a, b, *_ in pairs] == [(0.0, 0.3), (0.1, 0.4)]


def test_mixed_flow_drops_an_ambiguous_answer_and_expired_requests_go() -> None:
    p, pairs, ambiguous = _pairer(exact=False)
    ping, pong = GenericPacket(0xD3), GenericPacket(0xD8)
    _feed(p, 0.0, DEVICE, ping)
    _feed(p, 0.1, DEVICE, ping)
    _feed(p, 0.2, CLOUD, pong)  # two candidates: which connection's? dropped
    assert not pairs and ambiguous == {(DEVICE, "0xd3"): 1}
    _feed(p, 0.3, CLOUD, pong)  # one left: paired
    assert [(a, b) for a, b, *_ in pairs] == [(0.1, 0.3)]
    _feed(p, 1.0, DEVICE, ping)
    _feed(p, 20.0, CLOUD, pong)  # older than MAX_WAIT: given up
    assert len(pairs) == 1
