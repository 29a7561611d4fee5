# Learning exchanges from captures: which packets answer which, how, and how fast.
#
# Strategy, per setup variant (a capture's peer: the real cloud or a local server):
# 1. Discover response kinds.  For every packet R, look at the other side's packets after it
#    (until the next packet of R's kind from R's side, at most WINDOW s) and in a window of the
#    same length before it.  A kind RK answers K when it is much more frequent after K than
#    before K (lift), so ambient traffic (pings of other devices in a mixed log) is not taken
#    for an answer.  The typical count of RK per answered K gives repeated responses (f9 52
#    answers f8 52 twice).
# 2. Pair.  Each response is matched to the oldest outstanding request of a kind it answers
#    (FIFO, as a device works through its commands), restricted to requests whose bytes it
#    echoes once echo fields are known (a first FIFO pass learns them).  In a flow that mixes
#    connections (text logs without conn ids) a response with more than one candidate is
#    dropped as ambiguous rather than guessed.
# 3. From the pairs: byte templates (template.py), latency from the request to each response,
#    and for device answers the FIFO service time S_k = t_k - max(arrival_k, t_{k-1}), which
#    separates a command's own processing time from the time it waited behind others.
from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from cyncsim.replay.capture.model import CLOUD, DEVICE, CaptureResult, Flow, FlowPacket
from cyncsim.replay.describe import request_key
from cyncsim.replay.model.dist import Distribution
from cyncsim.replay.model.template import Template, learn_template
from cyncsim.replay.payloads import decode_command, decode_status_report, decode_time_reply
from cyncsim.replay.protocol import CyncPacket, FramedPacket, PacketType, decode_packet

__all__ = [
    "MAX_WAIT",
    "ExchangeModel",
    "ResponseModel",
    "learn_exchanges",
    "source_variant",
    "status_answers_command",
]

WINDOW = 3.0  # seconds a response may take to count as one
MAX_WAIT = 10.0  # outstanding requests older than this are given up
MIN_LIFT = 0.3
LOCAL_SERVER_DATE = (2024, 3, 10)  # the constant date cync-controller / cync-lan send


@dataclass(slots=True)
class ResponseModel:
    key: str
    template: Template
    share: float  # fraction of answered requests that got this response
    latency: Distribution  # request -> this response, seconds
    service: Distribution | None = None  # de-queued processing time (device answers)


@dataclass(slots=True)
class ExchangeModel:
    request: str
    role: str  # who answers: device | cloud
    variant: str
    requests: int = 0
    answered: int = 0
    ambiguous: int = 0
    responses: list[ResponseModel] = field(default_factory=list)
    by_outstanding: dict[str, Distribution] = field(default_factory=dict)


def source_variant(flows: Iterable[Flow]) -> str:
    """``local`` when the peer behaves like cync-controller/cync-lan, else ``cloud``."""
    for flow in flows:
        for fp in flow.packets:
            if fp.sender != CLOUD:
                continue
            if fp.packet.type == PacketType.CONTROL:
                return "local"
            t = decode_time_reply(fp.packet)
            if t is not None and (t.year, t.month, t.day) == LOCAL_SERVER_DATE:
                return "local"
    return "cloud"


def _other(side: str) -> str:
    return CLOUD if side == DEVICE else DEVICE


def _sorted_packets(flow: Flow) -> list[FlowPacket]:
    return sorted(flow.packets, key=lambda fp: fp.ts)  # stable: keeps stream order on ties


# Which kinds may answer which (PROTOCOL.md section 8), declared once as data.  Only the
# candidates are declared: whether, how often, in what order, with which bytes and how fast
# a kind really answers is learned from the captures, and a candidate the data never shows
# is left out of the model.  Entries: (request side, request key or prefix*, response keys,
# how many of each response one request may get).
_CANDIDATES: tuple[tuple[str, str, tuple[str, ...], int], ...] = (
    (DEVICE, "0x23", ("0x28",), 1),
    (DEVICE, "0xc3", ("0xc8",), 1),
    (DEVICE, "0xd3", ("0xd8",), 1),
    (DEVICE, "0x43", ("0x48",), 1),
    (DEVICE, "0x83:*", ("0x88",), 1),
    (DEVICE, "0x7b", ("0x78",), 1),
    (CLOUD, "0xa3", ("0xab",), 1),
    (CLOUD, "0x73", ("0x7b",), 1),  # a malformed 0x73 (no valid frame) still gets its 0x7B
    (CLOUD, "0x73:f8:*", ("0x7b", "0x73:f9:{op}", "0x83:fa:db"), 2),
)
_MIN_SHARE = 0.3  # a candidate answering fewer of the answered requests is not kept


def _candidates(side: str, key: str) -> list[tuple[str, int]]:
    for cside, pattern, rks, times in _CANDIDATES:
        if cside != side:
            continue
        if pattern == key or (pattern.endswith("*") and key.startswith(pattern[:-1])):
            op = key.rsplit(":", 1)[-1]
            return [(rk.replace("{op}", op), times if "{op}" in rk else 1) for rk in rks]
    return []


@dataclass(slots=True)
class _Pending:
    fp: FlowPacket
    key: str
    expected: Counter[str]
    remaining: Counter[str]
    depth: dict[str, int] = field(default_factory=dict)  # requests still waiting, at arrival


@dataclass(slots=True)
class _Pair:
    req: FlowPacket
    resp: FlowPacket
    req_key: str
    occurrence: int
    outstanding: int
    device_id: bytes
    flow: str


EchoMap = dict[tuple[str, str], list[tuple[int, int, int]]]  # (req key, resp key) -> ranges


def _pair(
    flows: list[Flow], echoes: EchoMap, repeat: bool
) -> tuple[list[_Pair], Counter[tuple[str, str]]]:
    """Match responses to requests; returns the pairs and ambiguous drops per (side, key).

    Without known echo fields (first pass) every request takes one response of each kind;
    with them (``repeat``) a request may take several of a kind it is linked to by an echo.
    """
    pairs: list[_Pair] = []
    ambiguous: Counter[tuple[str, str]] = Counter()
    for flow in flows:
        queues: dict[tuple[str, str], deque[_Pending]] = defaultdict(deque)
        dev_id = flow.device_id or b""
        for fp in _sorted_packets(flow):
            key = request_key(fp.packet)
            qk = (fp.sender, key)
            if qk in queues:
                _match(fp, key, queues[qk], echoes, flow, pairs, ambiguous, dev_id)
            cands = _candidates(fp.sender, key)
            if cands:
                rks: Counter[str] = Counter()
                for rk, times in cands:
                    rks[rk] = times if repeat and echoes.get((key, rk)) else 1
                pend = _Pending(fp, key, Counter(rks), Counter(rks))
                for rk in sorted(set(rks)):
                    q = queues[(_other(fp.sender), rk)]
                    pend.depth[rk] = sum(
                        1 for p in q if p.remaining[rk] and fp.ts - p.fp.ts <= MAX_WAIT
                    )
                    q.append(pend)
    return pairs, ambiguous


def _match(
    fp: FlowPacket,
    key: str,
    queue: deque[_Pending],
    echoes: EchoMap,
    flow: Flow,
    pairs: list[_Pair],
    ambiguous: Counter[tuple[str, str]],
    dev_id: bytes,
) -> None:
    while queue and (fp.ts - queue[0].fp.ts > MAX_WAIT or not queue[0].remaining[key]):
        queue.popleft()
    if not queue:
        return
    raw = fp.packet.encode()
    cands = [p for p in queue if p.remaining[key] and _echo_ok(p, raw, key, echoes)]
    if not cands:
        return
    chosen = cands[0]
    occurrence = chosen.expected[key] - chosen.remaining[key]
    chosen.remaining[key] -= 1
    if not flow.exact and len(cands) > 1:
        ambiguous[(chosen.fp.sender, chosen.key)] += 1
    else:
        depth = chosen.depth.get(key, 0)
        pairs.append(_Pair(chosen.fp, fp, chosen.key, occurrence, depth, dev_id, flow.id))
    if not any(chosen.remaining.values()):
        queue.remove(chosen)


def _echo_ok(p: _Pending, raw: bytes, key: str, echoes: EchoMap) -> bool:
    if key == "0x83:fa:db":
        return status_answers_command(p.fp.packet, raw)
    ranges = echoes.get((p.key, key))
    if not ranges:
        return True
    req = p.fp.packet.encode()
    return all(req[src : src + w] == raw[dst : dst + w] for dst, w, src in ranges)


def status_answers_command(request: CyncPacket, raw: bytes) -> bool:
    """A status report answers a command when it reports the node the command targeted."""
    if not isinstance(request, FramedPacket) or request.frame is None:
        return False
    cmd = decode_command(request.frame)
    status = decode_status_report(decode_packet(raw, strict=False))
    if cmd is None or status is None:
        return False
    return cmd.is_group or status.node_id == cmd.target


def learn_exchanges(result: CaptureResult) -> tuple[list[ExchangeModel], dict[str, str]]:
    """Exchanges per variant, and the variant of each source."""
    by_source: dict[str, list[Flow]] = defaultdict(list)
    for flow in result.flows:
        if flow.kind == "cync":
            by_source[flow.source].append(flow)
    variants = {src: source_variant(fl) for src, fl in by_source.items()}
    grouped: dict[str, list[Flow]] = defaultdict(list)
    for src, fl in sorted(by_source.items()):
        grouped[variants[src]].extend(fl)
    out: list[ExchangeModel] = []
    for variant, flows in sorted(grouped.items()):
        out.extend(_learn_variant(variant, flows))
    return out, variants


def _counters(flows: list[Flow]) -> dict[str, dict[int, str]]:
    """Packet types whose message id steps by one per packet, per sender."""
    steps: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for flow in flows:
        if not flow.exact:
            continue
        last: dict[tuple[str, int], int] = {}
        for fp in flow.packets:
            pkt = fp.packet
            if not isinstance(pkt, FramedPacket):
                continue
            k = (fp.sender, pkt.type)
            c = pkt.counter
            if k in last:
                steps[k][0] += 1
                steps[k][1] += (c - last[k]) & 0xFFFF == 1
            last[k] = c
    out: dict[str, dict[int, str]] = defaultdict(dict)
    for (sender, t), (n, ok) in steps.items():
        if n and ok / n >= 0.9:
            out[sender][t] = f"{sender}:0x{t:02x}"
    return out


def _learn_variant(variant: str, flows: list[Flow]) -> list[ExchangeModel]:
    pairs, _ = _pair(flows, {}, repeat=False)
    counters = _counters(flows)
    echoes: EchoMap = {}
    by_kind: dict[tuple[str, str, int], list[_Pair]] = defaultdict(list)
    for p in pairs:
        by_kind[(p.req_key, request_key(p.resp.packet), p.occurrence)].append(p)
    for (k, rk, occ), ps in by_kind.items():
        if occ:
            continue
        tpl = _template(ps, counters.get(ps[0].resp.sender, {}))
        echoes[(k, rk)] = [
            (f.start, f.end - f.start, f.source) for f in tpl.fields if f.role == "echo"
        ]
    pairs, ambiguous = _pair(flows, echoes, repeat=True)
    by_kind.clear()
    for p in pairs:
        by_kind[(p.req_key, request_key(p.resp.packet), p.occurrence)].append(p)
    requests: Counter[tuple[str, str]] = Counter()
    answered: Counter[tuple[str, str]] = Counter()
    seen: set[int] = set()
    for flow in flows:
        for fp in flow.packets:
            requests[(fp.sender, request_key(fp.packet))] += 1
    for p in pairs:
        if id(p.req) not in seen:
            seen.add(id(p.req))
            answered[(p.req.sender, p.req_key)] += 1
    out = []
    for side, k in sorted(requests):
        cands = _candidates(side, k)
        if not cands or not answered[(side, k)]:
            continue
        ex = ExchangeModel(k, _other(side), variant, requests[(side, k)], answered[(side, k)])
        ex.ambiguous = ambiguous[(side, k)]
        for rk, occ in sorted({(rk, occ) for (kk, rk, occ) in by_kind if kk == k}):
            ps = by_kind[(k, rk, occ)]
            if len(ps) < _MIN_SHARE * ex.answered:
                continue
            tpl = _template(ps, counters.get(ps[0].resp.sender, {}))
            lat = Distribution.from_samples(p.resp.ts - p.req.ts for p in ps)
            share = len(ps) / max(1, ex.answered)
            ex.responses.append(ResponseModel(rk, tpl, round(min(share, 1.0), 4), lat))
        if not ex.responses:
            continue
        ex.responses.sort(key=lambda r: r.latency.p50)
        if ex.role == DEVICE:
            _service_times(ex, by_kind, flows)
        out.append(ex)
    return out


def _template(ps: list[_Pair], counters: dict[int, str]) -> Template:
    return learn_template(
        [(p.req.packet.encode(), p.resp.packet.encode()) for p in ps],
        device_ids=[p.device_id for p in ps],
        counters=counters,
    )


def _service_times(
    ex: ExchangeModel,
    by_kind: dict[tuple[str, str, int], list[_Pair]],
    flows: list[Flow],
) -> None:
    """FIFO decomposition of device answer times, and the first response by queue depth.

    A device answers the requests of one connection one after another, so the k-th answer
    of a kind leaves at max(arrival_k, previous answer) + S_k; S_k is what the device itself
    took.  The sequence runs over every request kind that gets this response kind.
    """
    exact = {f.id for f in flows if f.exact}
    for resp in ex.responses:
        per_flow: dict[str, list[_Pair]] = defaultdict(list)
        for (_, rk, occ), ps in by_kind.items():
            if rk == resp.key and occ == 0:
                for p in ps:
                    if p.flow in exact:
                        per_flow[p.flow].append(p)
        samples: list[float] = []
        for ps in per_flow.values():
            ps.sort(key=lambda p: p.resp.ts)
            prev = float("-inf")
            for p in ps:
                if p.req_key == ex.request:
                    samples.append(max(0.0, p.resp.ts - max(p.req.ts, prev)))
                prev = p.resp.ts
        if samples:
            resp.service = Distribution.from_samples(samples)
    first = ex.responses[0]
    buckets: dict[str, list[float]] = defaultdict(list)
    for p in by_kind.get((ex.request, first.key, 0), []):
        b = "0" if p.outstanding == 0 else ("1-4" if p.outstanding < 5 else "5+")
        buckets[b].append(p.resp.ts - p.req.ts)
    ex.by_outstanding = {b: Distribution.from_samples(v) for b, v in sorted(buckets.items())}
