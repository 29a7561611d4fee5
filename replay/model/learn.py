# Learning exchanges from captures: which packets answer which, how, and how fast.
#
# Strategy, one packet at a time, so that a capture is learned as it is read:
# 1. Pair (_pairing.py).  Which kinds may answer which is declared (PROTOCOL.md section 8),
#    with the exchange key where the protocol echoes one; each response is matched to the
#    oldest outstanding request of a kind it answers under its key (FIFO, as a device works
#    through its commands), through an index, never a scan.  In a flow that mixes
#    connections (text logs without conn ids) a response with more than one candidate is
#    dropped as ambiguous rather than guessed.
# 2. From the pairs, per (request kind, response kind, occurrence), bounded as the capture
#    grows: the latency from the request (dist.Samples: exact while few, a sketch beyond),
#    the pairs for the byte template (template.py; all of them up to TEMPLATE_PAIRS, an
#    evenly spaced sample of 1,024-2,048 beyond, every 2^k-th pair: a field's role is then
#    decided on that sample, its agreement known to within about 0.5 % at the 98 %
#    threshold, and the exemplar is still the first pair), and for device answers the
#    service time: for a request's first answer (an ack) the FIFO S_k = t_k - max(arrival_k,
#    t_{k-1}), which separates a command's own processing time from the time it waited
#    behind others; for a later answer (an f9 result, a status) the work after the request's
#    previous answer left, t_k - t_prev (the device acks, works, then sends the result:
#    docs/fidelity.md); and the first answer's latency by queue depth.  The acks and the
#    results feed the stall track (stalls.py).
# 3. At the end, per setup variant (a capture's peer: the real cloud or a local server), the
#    sources of that variant are summed and each exchange keeps the responses that answer at
#    least _MIN_SHARE of its answered requests.
# Per packet the work is worked out once per flow and (sender, kind): a plan with its
# request count cell, its counter key and whether it can tell a local server (here), and the
# queues it answers or waits in (_pairing.py); the request key comes from a table.
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cyncsim.replay.capture.model import CLOUD, DEVICE, CaptureResult, Flow, FlowPacket
from cyncsim.replay.describe import request_key
from cyncsim.replay.model._pairing import MAX_WAIT, FlowPairer, Pending, candidates, other_side
from cyncsim.replay.model.dist import Distribution, Samples
from cyncsim.replay.model.stalls import StallModel, StallSamples
from cyncsim.replay.model.template import Template, learn_template
from cyncsim.replay.payloads import decode_command, decode_status_report, decode_time_reply
from cyncsim.replay.protocol import CyncPacket, FramedPacket, PacketType, decode_packet

__all__ = [
    "MAX_WAIT",
    "ExchangeLearner",
    "ExchangeModel",
    "ResponseModel",
    "learn_exchanges",
    "source_variant",
    "status_answers_command",
]

LOCAL_SERVER_DATE = (2024, 3, 10)  # the constant date cync-controller / cync-lan send
TEMPLATE_PAIRS = 2048  # pairs kept per response kind for its template (a reservoir beyond)
_MIN_SHARE = 0.3  # a candidate answering fewer of the answered requests is not kept


@dataclass(slots=True)
class ResponseModel:
    key: str
    template: Template
    share: float  # fraction of answered requests that got this response
    latency: Distribution  # request -> this response, seconds
    # device answers: the first de-queued (from max(arrival, the previous of its kind)), a
    # later one from the request's previous answer (an f9 result: the work after its ack)
    service: Distribution | None = None


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
            if fp.sender == CLOUD and _local_peer(fp.packet):
                return "local"
    return "cloud"


def _local_peer(pkt: CyncPacket) -> bool:
    """A cloud-side packet only a local server sends."""
    if pkt.type == PacketType.CONTROL:
        return True
    t = decode_time_reply(pkt)
    return t is not None and (t.year, t.month, t.day) == LOCAL_SERVER_DATE


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
    """Exchanges per variant, and the variant of each source (of a whole read result)."""
    learner = ExchangeLearner()
    for flow in result.flows:
        if flow.kind == "cync":
            learner.feed_flow(flow)
    return learner.finish()


class _Kind:
    """What is kept of one (request kind, response kind, occurrence): bounded."""

    __slots__ = ("latency", "n", "next", "pairs", "sender", "stride")

    def __init__(self, name: tuple[str, str, int], sender: str) -> None:
        self.n = 0
        self.sender = sender
        self.latency = Samples()
        # (order, request, response, flow state) of every pair while there are at most
        # TEMPLATE_PAIRS; beyond, an evenly spaced sample: pair i (from 0) is kept when i is
        # a multiple of ``stride``, which doubles (dropping every other pair kept) whenever
        # TEMPLATE_PAIRS are kept.  ``next``: the count ``n`` at which the next pair is kept,
        # so a pair that is not kept costs one comparison.
        self.pairs: list[tuple[tuple[int, int, int], CyncPacket, CyncPacket, _FlowState]] = []
        self.stride = 1
        self.next = 1

    def keep(self, item: tuple[tuple[int, int, int], CyncPacket, CyncPacket, _FlowState]) -> None:
        """Keep pair number ``n`` (== ``next``)."""
        pairs = self.pairs
        if len(pairs) >= TEMPLATE_PAIRS:
            del pairs[1::2]
            self.stride *= 2
            if (self.n - 1) % self.stride:  # not on the coarser grid: the next one is
                self.next = self.n + self.stride // 2
                return
        pairs.append(item)
        self.next = self.n + self.stride

    def add(self, item: tuple[tuple[int, int, int], CyncPacket, CyncPacket, _FlowState]) -> None:
        self.n += 1
        if self.n == self.next:
            self.keep(item)


@dataclass(slots=True)
class _Stats:
    """One source's (or, summed, one variant's) tallies."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    answered: Counter[tuple[str, str]] = field(default_factory=Counter)
    ambiguous: dict[tuple[str, str], int] = field(default_factory=dict)
    kinds: dict[tuple[str, str, int], _Kind] = field(default_factory=dict)
    service: dict[tuple[str, str], Samples] = field(default_factory=dict)
    outstanding: dict[tuple[str, str], dict[str, Samples]] = field(default_factory=dict)
    steps: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    local: bool = False
    cells: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # requests, as fed
    stalls: StallSamples = field(default_factory=StallSamples)  # the acks' busy gaps

    def count_requests(self) -> None:
        for k, cell in self.cells.items():
            if cell[0]:
                self.requests[k] += cell[0]
                cell[0] = 0

    def spill(self) -> None:
        for kind in self.kinds.values():
            kind.latency.spill()
        for smp in self.service.values():
            smp.spill()
        for buckets in self.outstanding.values():
            for smp in buckets.values():
                smp.spill()

    def merge(self, other: _Stats) -> None:
        self.requests.update(other.requests)
        self.answered.update(other.answered)
        for k, n in other.ambiguous.items():
            self.ambiguous[k] = self.ambiguous.get(k, 0) + n
        for name, kind in other.kinds.items():
            mine = self.kinds.get(name)
            if mine is None:
                self.kinds[name] = kind
                continue
            mine.latency.merge(kind.latency)
            for item in kind.pairs:
                mine.add(item)
            mine.n += kind.n - len(kind.pairs)
        for k, smp in other.service.items():  # taken over where this has none (no copy)
            if k in self.service:
                self.service[k].merge(smp)
            else:
                self.service[k] = smp
        for k, buckets in other.outstanding.items():
            mine_b = self.outstanding.setdefault(k, {})
            for b, smp in buckets.items():
                if b in mine_b:
                    mine_b[b].merge(smp)
                else:
                    mine_b[b] = smp
        for step, (n, ok) in other.steps.items():
            st = self.steps.setdefault(step, [0, 0])
            st[0] += n
            st[1] += ok
        self.local = self.local or other.local
        self.stalls.merge(other.stalls)


class _FlowState:
    __slots__ = ("flow", "last", "outstanding", "pairer", "plans", "prev", "rank", "stalls",
                 "stats")  # fmt: skip

    def __init__(self, flow: Flow, rank: int, stats: _Stats, learner: ExchangeLearner) -> None:
        self.flow = flow
        self.stats = stats
        self.rank = rank  # order of first packet; finish() may be told the flows' order
        self.pairer = FlowPairer(flow.exact, self._pair, stats.ambiguous)
        self.last: dict[tuple[str, int], int] = {}  # message-id counters, exact flows
        self.prev: dict[str, float] = {}  # last first-answer time per response kind
        # per sender, per key: (its request count cell, its counter key or None, may it be
        # a local server's packet) -- worked out on the first packet of that kind
        self.plans: dict[str, dict[str, _Plan]] = {DEVICE: {}, CLOUD: {}}
        self.outstanding: dict[tuple[str, str], _Outstanding] = {}
        self.stalls = stats.stalls.track()  # stalls.py: the acks, in order

    def _pair(self, req: Pending, resp: FlowPacket, rk: str, occ: int, depth: int) -> None:
        st = self.stats
        rq = req.fp
        name = (req.key, rk, occ)
        kind = st.kinds.get(name)
        if kind is None:
            kind = st.kinds[name] = _Kind(name, resp.sender)
        lat = resp.ts - rq.ts
        kind.latency.values.append(lat)  # the importer spills the buffers once per chunk
        # the sample of template pairs (_Kind.add, with the item made only when kept)
        n = kind.n = kind.n + 1
        if n == kind.next:
            kind.keep(((0, 0, self.pairer.n), rq.packet, resp.packet, self))
        if not req.answered:
            req.answered = True
            st.answered[(rq.sender, req.key)] += 1
        before = req.last_answer
        req.last_answer = resp.ts
        if occ:
            return
        kr = (req.key, rk)
        out = self.outstanding.get(kr)
        if out is None:
            out = self.outstanding[kr] = _Outstanding(st, kr, self.flow.exact)
        b = "0" if depth == 0 else ("1-4" if depth < 5 else "5+")  # queue depth at arrival
        smp = out.buckets.get(b)
        if smp is None:
            smp = out.buckets[b] = Samples()
        smp.values.append(lat)
        svc = out.service
        if svc is not None:
            prev = self.prev.get(rk)
            if before is None:
                start = rq.ts if prev is None or prev < rq.ts else prev
                svc.values.append(max(0.0, resp.ts - start))
            else:  # a later answer: the work after the request's previous answer left
                svc.values.append(max(0.0, resp.ts - before))
            if rk == "0x7b":
                self.stalls.add(req.key, rq.ts, resp.ts, prev, depth)
            elif before is not None:  # its result, when its previous answer was its ack
                self.stalls.result(rq.ts, before, resp.ts)
            self.prev[rk] = resp.ts


class _Outstanding:
    """The samples one (request kind, first response kind) feeds on one flow."""

    __slots__ = ("buckets", "kr", "service", "st")

    def __init__(self, st: _Stats, kr: tuple[str, str], exact: bool) -> None:
        self.st = st
        self.kr = kr
        self.buckets = st.outstanding.setdefault(kr, {})
        self.service: Samples | None = None
        if exact:
            svc = st.service.get(kr)
            if svc is None:
                svc = st.service[kr] = Samples()
            self.service = svc


_Plan = tuple[list[int], tuple[str, int] | None, bool]
_PLAIN_KEYS = tuple(f"0x{t:02x}" for t in range(256))
_FRAMED_KEYS: dict[tuple[int, int, int], str] = {}


def packet_key(pkt: CyncPacket) -> str:
    """describe.request_key, from a table instead of formatting a string per packet."""
    if isinstance(pkt, FramedPacket):
        f = pkt.frame
        if f is not None:
            k = (pkt.type, f.kind, f.opcode)
            got = _FRAMED_KEYS.get(k)
            if got is None:
                got = _FRAMED_KEYS[k] = request_key(pkt)
            return got
    t = pkt.type
    return _PLAIN_KEYS[t] if 0 <= t < 256 else request_key(pkt)


class ExchangeLearner:
    """Learns exchanges from packets fed one at a time, flow by flow or interleaved.

    ``feed(flow, fp)`` for every packet of a Cync flow, in capture-time order within its
    flow; ``finish()`` gives the exchanges per variant and each source's variant.  What is
    kept is bounded (see the module comment), whatever the number of packets.
    """

    def __init__(self) -> None:
        self._sources: dict[str, _Stats] = {}
        self._flows: dict[int, _FlowState] = {}
        self.packets = 0
        self.stalls: dict[str, StallModel] = {}  # per variant, set by finish()

    def feed_flow(self, flow: Flow) -> None:
        for fp in sorted(flow.packets, key=lambda fp: fp.ts):  # stable: stream order on ties
            self.feed(flow, fp)
        self.spill()

    def _state(self, flow: Flow) -> _FlowState:
        st = self._sources.get(flow.source)
        if st is None:
            st = self._sources[flow.source] = _Stats()
        state = self._flows[id(flow)] = _FlowState(flow, len(self._flows), st, self)
        return state

    def _plan(self, state: _FlowState, sender: str, key: str, pkt: CyncPacket) -> _Plan:
        st = state.stats
        cell = st.cells.get((sender, key))
        if cell is None:
            cell = st.cells[(sender, key)] = [0]
        t = pkt.type
        counter = (sender, t) if state.flow.exact else None
        maybe_local = sender == CLOUD and t in (PacketType.CONTROL, PacketType.TIME_REPLY)
        plan = state.plans[sender][key] = (cell, counter, maybe_local)
        return plan

    def feed(self, flow: Flow, fp: FlowPacket) -> None:
        state = self._flows.get(id(flow))
        if state is None:
            state = self._state(flow)
        self.packets += 1
        self.feed_state(state, fp)

    def state_of(self, flow: Flow) -> _FlowState:
        """The state ``feed_state`` takes for ``flow`` (made on its first packet)."""
        state = self._flows.get(id(flow))
        return self._state(flow) if state is None else state

    def feed_state(self, state: _FlowState, fp: FlowPacket) -> None:
        """``feed`` with the flow's state already looked up (the importer's hot loop;
        ``packets`` is then counted by the caller)."""
        pkt = fp.packet
        sender = fp.sender
        # describe.request_key, from a table (packet_key inlined)
        if isinstance(pkt, FramedPacket) and pkt.frame is not None:
            f = pkt.frame
            fk = (pkt.type, f.kind, f.opcode)
            key = _FRAMED_KEYS.get(fk) or packet_key(pkt)
        else:
            t = pkt.type
            key = _PLAIN_KEYS[t] if 0 <= t < 256 else request_key(pkt)
        plan = state.plans[sender].get(key)
        if plan is None:
            plan = self._plan(state, sender, key, pkt)
        cell, counter, maybe_local = plan
        cell[0] += 1
        if maybe_local:
            st = state.stats
            if not st.local and _local_peer(pkt):
                st.local = True
        if counter is not None and isinstance(pkt, FramedPacket):
            c = pkt.counter
            last = state.last.get(counter)
            if last is not None:
                steps = state.stats.steps
                step = steps.get(counter)
                if step is None:
                    step = steps[counter] = [0, 0]
                step[0] += 1
                step[1] += (c - last) & 0xFFFF == 1
            state.last[counter] = c
        state.pairer.feed(fp, key)

    def spill(self) -> None:
        """Fold the sample buffers past their limit into sketches (bounded memory)."""
        for st in self._sources.values():
            st.spill()

    def variants(self) -> dict[str, str]:
        return {src: "local" if st.local else "cloud" for src, st in self._sources.items()}

    def finish(self, order: Sequence[Flow] = ()) -> tuple[list[ExchangeModel], dict[str, str]]:
        """The exchanges; ``order``: the flows in the reader's order (default: first packet)."""
        variants = self.variants()
        for state in self._flows.values():
            state.stalls.close()  # results not known by now never came
        ranks = {id(f): i for i, f in enumerate(order)}
        grouped: dict[str, _Stats] = {}
        for rank, (src, st) in enumerate(sorted(self._sources.items())):
            st.spill()
            st.count_requests()
            for kind in st.kinds.values():
                kind.pairs = [
                    ((rank, ranks.get(id(fs.flow), fs.rank), o[2]), req, resp, fs)
                    for o, req, resp, fs in kind.pairs
                ]
            v = variants[src]
            if v not in grouped:
                grouped[v] = _Stats()
            grouped[v].merge(st)
        out: list[ExchangeModel] = []
        for variant, st in sorted(grouped.items()):
            out.extend(_finish_variant(variant, st))
            stalls = st.stalls.build()
            if stalls is not None:
                self.stalls[variant] = stalls
        return out, variants


def _counters(st: _Stats) -> dict[str, dict[int, str]]:
    """Packet types whose message id steps by one per packet, per sender."""
    out: dict[str, dict[int, str]] = defaultdict(dict)
    for (sender, t), (n, ok) in st.steps.items():
        if n and ok / n >= 0.9:
            out[sender][t] = f"{sender}:0x{t:02x}"
    return out


def _template(kind: _Kind, counters: dict[int, str]) -> Template:
    pairs = sorted(kind.pairs, key=lambda p: p[0])
    return learn_template(
        [(req.encode(), resp.encode()) for _, req, resp, _ in pairs],
        device_ids=[state.flow.device_id or b"" for *_, state in pairs],
        counters=counters,
    )


def _finish_variant(variant: str, st: _Stats) -> list[ExchangeModel]:
    counters = _counters(st)
    out = []
    for side, k in sorted(st.requests):
        if not candidates(side, k) or not st.answered[(side, k)]:
            continue
        ex = ExchangeModel(
            k, other_side(side), variant, st.requests[(side, k)], st.answered[(side, k)]
        )
        ex.ambiguous = st.ambiguous.get((side, k), 0)
        for rk, occ in sorted({(rk, occ) for (kk, rk, occ) in st.kinds if kk == k}):
            kind = st.kinds[(k, rk, occ)]
            if kind.n < _MIN_SHARE * ex.answered:
                continue
            tpl = _template(kind, counters.get(kind.sender, {}))
            share = kind.n / max(1, ex.answered)
            ex.responses.append(
                ResponseModel(rk, tpl, round(min(share, 1.0), 4), kind.latency.build())
            )
        if not ex.responses:
            continue
        ex.responses.sort(key=lambda r: r.latency.p50)
        if ex.role == DEVICE:
            for resp in ex.responses:
                svc = st.service.get((k, resp.key))
                if svc is not None and len(svc):
                    resp.service = svc.build()
            buckets = st.outstanding.get((k, ex.responses[0].key), {})
            ex.by_outstanding = {b: smp.build() for b, smp in sorted(buckets.items())}
        out.append(ex)
    return out
