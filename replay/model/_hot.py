# The importer's hot loop: one call per packet of an exact flow (one TCP connection) for
# both learners, the exchange learner (learn.py, with its pairing, _pairing.py) and the
# behaviour learner (behaviour.py).
#
# Strategy: what a packet does depends on its flow and on (sender, type, frame kind, opcode),
# so that is worked out once per flow, on the first packet of each, into a plan: its request
# key, its request count cell, whether its message id is counted, whether it may tell a local
# server, the queue it answers and the queues it waits in, and what the behaviour learner
# looks at.  A packet then costs one dictionary lookup and the work itself, inlined here:
# the same steps, in the same order and on the same state, as ExchangeLearner.feed_state +
# FlowPairer.feed + _FlowState._pair and BehaviourLearner.feed_state, which stay the
# reference (and still learn the flows that mix connections, where pairing is not FIFO).
# The equivalence is checked by comparing the models both paths write (tests/unit).
from __future__ import annotations

from collections import deque

from cyncsim.replay.capture.model import CLOUD, DEVICE, FlowPacket
from cyncsim.replay.model._pairing import _GROUP, _NEVER, MAX_WAIT, KeyOf, Pending, _Queue
from cyncsim.replay.model.behaviour import _PRE_HELLO, CONNECT_SPAN, BehaviourLearner, _Flow
from cyncsim.replay.model.dist import Samples
from cyncsim.replay.model.learn import (
    TEMPLATE_PAIRS,
    ExchangeLearner,
    _FlowState,
    _Kind,
    _local_peer,
    _Outstanding,
    packet_key,
)
from cyncsim.replay.protocol import (
    CyncPacket,
    FramedPacket,
    FrameKind,
    HelloPacket,
    IdPacket,
    PacketType,
)

__all__ = ["FlowLearner"]

_FRAMED = FramedPacket
_HELLO = HelloPacket
_PING = int(PacketType.PING)
_STATUS = int(PacketType.STATUS)
_REPORT_KIND = int(FrameKind.REPORT)
_GROUP_ANSWER = "0x83:fa:db"  # answers group commands too (see FlowPairer._match)
_CLOUD_BIT = 1 << 24  # plan codes: sender, type, frame kind, opcode in one int

# (key, request count cell, counter key or None, may tell a local server, the queue it
# answers (queue, echo key reader) or None, the queues it waits in, the responses it
# expects, may tell who a device is)
_Plan = tuple[
    str,
    list[int],
    tuple[str, int] | None,
    bool,
    tuple[_Queue, KeyOf | None] | None,
    tuple[tuple[str, _Queue, KeyOf | None], ...],
    dict[str, int],
    bool,
]


class FlowLearner:
    """Both learners' state of one exact flow; ``feed(fp)`` learns one packet of it."""

    __slots__ = ("beh", "beh_learner", "ex", "ex_learner", "plans", "queues")

    def __init__(self, ex_learner: ExchangeLearner, beh_learner: BehaviourLearner,
                 ex: _FlowState, beh: _Flow) -> None:  # fmt: skip
        self.ex_learner = ex_learner
        self.beh_learner = beh_learner
        self.ex = ex
        self.beh = beh
        self.plans: dict[int, _Plan] = {}
        self.queues = 0  # the pairer's queue count when the plans were made

    def _plan(self, code: int, sender: str, pkt: CyncPacket) -> _Plan:
        ex = self.ex
        key = packet_key(pkt)
        cell, counter, maybe_local = ex.plans[sender].get(key) or self.ex_learner._plan(
            ex, sender, key, pkt
        )
        pairer = ex.pairer
        match, adds, expected = pairer.plans.get((sender, key)) or pairer._plan(sender, key)
        if len(pairer.queues) != self.queues:
            # A new queue: responses of its kind now have one to answer (FlowPairer._plan).
            self.plans.clear()
            self.queues = len(pairer.queues)
        t = pkt.type
        ident = sender == DEVICE and (
            t in (0x23, _STATUS) or (code > 0xFFFF and (code >> 8) & 0xFF == _REPORT_KIND)
        )
        plan = (key, cell, counter, maybe_local, match, adds, expected, ident)
        self.plans[code] = plan
        return plan

    def feed(self, fp: FlowPacket) -> None:
        pkt = fp.packet
        sender = fp.sender
        ts = fp.ts
        t = pkt.type
        code = t
        if pkt.__class__ is _FRAMED:
            f = pkt.frame
            if f is not None:
                code = (t << 16) | (f.kind << 8) | f.opcode
        if sender == CLOUD:
            code |= _CLOUD_BIT
        plan = self.plans.get(code)
        if plan is None:
            plan = self._plan(code, sender, pkt)
        key, cell, counter, maybe_local, match, adds, expected, ident = plan

        # -- ExchangeLearner.feed_state -----------------------------------------------------
        ex = self.ex
        cell[0] += 1
        if maybe_local:
            stats = ex.stats
            if not stats.local and _local_peer(pkt):
                stats.local = True
        if counter is not None and isinstance(pkt, _FRAMED):
            mid = pkt.msg_id
            c = (mid[0] << 8) | mid[1]
            last_ids = ex.last
            last = last_ids.get(counter)
            if last is not None:
                steps = ex.stats.steps
                step = steps.get(counter)
                if step is None:
                    step = steps[counter] = [0, 0]
                step[0] += 1
                step[1] += (c - last) & 0xFFFF == 1
            last_ids[counter] = c

        # -- FlowPairer.feed (an exact flow) ------------------------------------------------
        pairer = ex.pairer
        n = pairer.n = pairer.n + 1
        if match is not None:
            queue, keyof = match
            order = queue.order
            if order and ts - order[0][0] > MAX_WAIT:
                queue.expire(ts)
            if queue.live:
                k: object = b"" if keyof is None else keyof(pkt)
                if k is not None:
                    chosen = None
                    bucket = queue.buckets.get(k)
                    if bucket:
                        while bucket and bucket[0].remaining.get(key, 0) <= 0:
                            bucket.popleft()
                        if bucket:
                            chosen = bucket[0]
                    if key == _GROUP_ANSWER:
                        group = queue.first(_GROUP)
                        if group is not None and (chosen is None or group.seq < chosen.seq):
                            chosen = group
                    if chosen is not None:
                        rem = chosen.remaining
                        left = rem[key] - 1
                        rem[key] = left
                        if not left:
                            queue.live -= 1
                        _pair(ex, n, chosen, fp, key, chosen.expected[key] - left - 1,
                              chosen.depth.get(key, 0))  # fmt: skip
        if adds:
            pend = Pending(fp, key, n, expected, expected.copy())
            depth = pend.depth
            for rk, queue, keyof in adds:
                order = queue.order
                if order and ts - order[0][0] > MAX_WAIT:
                    queue.expire(ts)
                depth[rk] = queue.live
                ikey = b"" if keyof is None else keyof(pkt)
                if ikey is None:
                    ikey = _NEVER
                order.append((ts, pend, ikey))
                buckets = queue.buckets
                bucket = buckets.get(ikey)
                if bucket is None:
                    buckets[ikey] = bucket = deque()
                bucket.append(pend)
                queue.live += 1

        # -- BehaviourLearner.feed_state (an exact flow) ------------------------------------
        st = self.beh
        st.n += 1
        if st.first_ts is None:
            st.first_ts = ts
        if ident and (
            pkt.__class__ is _HELLO
            or (isinstance(pkt, _FRAMED) and ((pkt.frame is not None
                                              and pkt.frame.kind == _REPORT_KIND) or t == _STATUS))
            or (t == _STATUS and isinstance(pkt, IdPacket))
        ):  # fmt: skip
            self.beh_learner._identity(st.flow.source, pkt, st)
        if sender != DEVICE:
            st.prev_ts = ts
            st.answered = True
            return
        if t == _PING:
            if st.prev_ts is not None:
                st.src.idle.values.append(ts - st.prev_ts)
        elif t == _STATUS:
            if st.last_status is not None:
                st.src.status_gaps.values.append(ts - st.last_status)
            st.last_status = ts
        st.prev_ts = ts
        hello = st.hello
        if hello is None:
            if pkt.__class__ is _HELLO:
                st.hello = (ts, pkt.device_id)
                st.script = [(k2, t2) for k2, t2 in st.pre if t2 - ts <= CONNECT_SPAN]
                st.pre = []
            elif len(st.pre) < _PRE_HELLO:
                st.pre.append((key, ts))
        elif ts - hello[0] <= CONNECT_SPAN:
            st.script.append((key, ts))


def _pair(
    state: _FlowState, n: int, req: Pending, resp: FlowPacket, rk: str, occ: int, depth: int
) -> None:
    """_FlowState._pair, with the response's packet number ``n`` passed in."""
    st = state.stats
    rq = req.fp
    name = (req.key, rk, occ)
    kind = st.kinds.get(name)
    if kind is None:
        kind = st.kinds[name] = _Kind(name, resp.sender)
    lat = resp.ts - rq.ts
    kind.latency.values.append(lat)
    kn = kind.n = kind.n + 1
    pairs = kind.pairs
    if len(pairs) < TEMPLATE_PAIRS:
        pairs.append(((0, 0, n), rq.packet, resp.packet, state))
    elif kn == kind.next:
        pairs[kind.slot()] = ((0, 0, n), rq.packet, resp.packet, state)
    if not req.answered:
        req.answered = True
        st.answered[(rq.sender, req.key)] += 1
    if occ:
        return
    kr = (req.key, rk)
    out = state.outstanding.get(kr)
    if out is None:
        out = state.outstanding[kr] = _Outstanding(st, kr, True)
    b = "0" if depth == 0 else ("1-4" if depth < 5 else "5+")
    smp = out.buckets.get(b)
    if smp is None:
        smp = out.buckets[b] = Samples()
    smp.values.append(lat)
    svc = out.service
    if svc is not None:
        prev = state.prev.get(rk)
        start = rq.ts if prev is None or prev < rq.ts else prev
        svc.values.append(max(0.0, resp.ts - start))
        if rk == "0x7b":
            state.stalls.add(req.key, rq.ts, resp.ts, prev, depth)  # stalls.py
        state.prev[rk] = resp.ts
