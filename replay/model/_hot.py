# The importer's hot loop: the packets of an exact flow (one TCP connection), learned by both
# learners, the exchange learner (learn.py, with its pairing, _pairing.py) and the behaviour
# learner (behaviour.py), in one loop over what the reader buffered for the flow.
#
# Strategy: what a packet does depends on its flow and on (sender, type, frame kind, opcode),
# so that is worked out once per flow, on the first packet of each, into a plan: its request
# key, its request count cell, its message-id counter, whether it may tell a local server,
# the queue it answers and the queues it waits in (with the tallies a pair feeds), and
# whether the behaviour learner looks at who sent it.  A packet then costs one dictionary
# lookup and the work itself, inlined here: the same steps, in the same order and on the
# same state, as ExchangeLearner.feed_state + FlowPairer.feed + _FlowState._pair and
# BehaviourLearner.feed_state, which stay the reference (and still learn the flows that mix
# connections, where a response with two candidates is dropped).  The queues are leaner
# than _pairing's: an entry is a list, a bucket holds only the requests still expecting an
# answer, and an answered request leaves at once.  The equivalence is checked by comparing
# the models both paths learn (tests/unit/test_import_hot.py).
from __future__ import annotations

from collections import deque
from typing import Any

from cyncsim.replay.capture.model import CLOUD, DEVICE, Flow, PacketBuffer
from cyncsim.replay.model._pairing import _GROUP, _NEVER, MAX_WAIT, KeyOf, candidates, other_side
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

# A request waiting for its responses: [answered, time, packet, time of its latest answer
# or None], shared by the queues it waits in; in each queue an entry [responses left,
# arrival time, arrival number, queue depth at arrival, request, echo key, target] (lists:
# cheaper to make than objects, and one is made per request).  The target, one per flow,
# request kind and response kind: [responses expected, request key, its _Kind per
# occurrence (made on the first pair), its _Outstanding (likewise), the answered counter's
# key].
_LEFT, _TS, _SEQ, _DEPTH, _REQ, _IKEY, _TARGET = range(7)
_T_TIMES, _T_KEY, _T_KINDS, _T_OUT, _T_ANSWERED = range(5)
_Entry = list[Any]


class _Queue:
    """The requests waiting for one response kind on one flow (_pairing._Queue, leaner):
    ``order`` holds every entry in arrival order; a queue without an echo key (``fifo``)
    takes its answers from it directly, a keyed one through ``buckets`` (per echo key, in
    arrival order).  ``live``: entries still expecting an answer, not given up."""

    __slots__ = ("buckets", "fifo", "group", "keyof", "live", "order")

    def __init__(self, rk: str, keyof: KeyOf | None) -> None:
        self.keyof = keyof
        self.fifo = keyof is None
        self.group = rk == _GROUP_ANSWER
        self.order: deque[_Entry] = deque()
        self.buckets: dict[object, deque[_Entry]] = {}
        self.live = 0

    def expire(self, now: float) -> None:
        """Give up the requests older than MAX_WAIT (the oldest first)."""
        order = self.order
        if self.fifo:
            while order and now - order[0][_TS] > MAX_WAIT:
                if order.popleft()[_LEFT] > 0:
                    self.live -= 1
            return
        buckets = self.buckets
        while order and now - order[0][_TS] > MAX_WAIT:
            e = order.popleft()
            if e[_LEFT] <= 0:
                continue  # answered: it left its bucket then
            self.live -= 1
            bucket = buckets.get(e[_IKEY])
            if bucket is not None:
                seq = e[_SEQ]
                while bucket and bucket[0][_SEQ] <= seq:
                    bucket.popleft()
                if not bucket:
                    del buckets[e[_IKEY]]


# (key, request count cell, may tell a local server, the queue it answers or None, the
# queues it waits in (queue, echo key reader, answers expected, target), its message-id
# counter [last id, steps] or None, may tell who a device is)
_Plan = tuple[
    str,
    list[int],
    bool,
    _Queue | None,
    tuple[tuple[_Queue, KeyOf | None, int, list[Any]], ...],
    list[Any] | None,
    bool,
]


class FlowLearner:
    """Both learners' state of one exact flow; ``learn(packets)`` learns packets of it, as
    the reader buffers them (a capture.model.FlowSink's buffer of the flow)."""

    __slots__ = ("beh", "beh_learner", "ex", "ex_learner", "flow", "lasts", "n", "plans",
                 "queues")  # fmt: skip

    def __init__(
        self, ex_learner: ExchangeLearner, beh_learner: BehaviourLearner, flow: Flow
    ) -> None:
        self.ex_learner = ex_learner
        self.beh_learner = beh_learner
        self.flow = flow
        # Both learners' states are made on the first packet, so that a flow without
        # packets leaves no trace in them, as with ModelLearner.feed.
        self.ex: _FlowState | None = None
        self.beh: _Flow | None = None
        self.plans: dict[int, _Plan] = {}
        self.queues: dict[tuple[str, str], _Queue] = {}  # (responder, response key)
        self.n = 0  # packets of the flow so far (FlowPairer.n)
        self.lasts: dict[tuple[str, int], list[Any]] = {}  # counter -> [last id, its steps]

    def _plan(self, code: int, sender: str, pkt: CyncPacket) -> _Plan:
        ex: _FlowState = self.ex  # type: ignore[assignment]  # made by learn()
        key = packet_key(pkt)
        cell, counter, maybe_local = ex.plans[sender].get(key) or self.ex_learner._plan(
            ex, sender, key, pkt
        )
        # The pairing, as FlowPairer._plan works it out.
        cands = candidates(sender, key)
        side = other_side(sender)
        adds = []
        for rk, times, keys in sorted(cands, key=lambda c: c[0]):
            queue = self.queues.get((side, rk))
            if queue is None:
                queue = self.queues[(side, rk)] = _Queue(rk, keys[1] if keys else None)
                self.plans.clear()  # a response of that kind now has a queue to answer
            expected = times if keys else 1
            target = [expected, key, [None] * expected, None, (sender, key)]
            adds.append((queue, keys[0] if keys else None, expected, target))
        t = pkt.type
        ident = sender == DEVICE and (
            t in (0x23, _STATUS) or (code > 0xFFFF and (code >> 8) & 0xFF == _REPORT_KIND)
        )
        match = self.queues.get((sender, key))
        last = None  # the message-id counter: [last id or None, its steps [n, +1 steps]]
        if counter is not None:
            last = self.lasts.get(counter)
            if last is None:
                last = self.lasts[counter] = [None, ex.stats.steps.setdefault(counter, [0, 0])]
        plan = (key, cell, maybe_local, match, tuple(adds), last, ident)
        self.plans[code] = plan
        return plan

    def learn(self, packets: PacketBuffer) -> None:
        """Learn the packets of the flow (sender, ts, packet), in stream order."""
        if self.ex is None:  # the first packet
            self.ex = self.ex_learner.state_of(self.flow)
            self.beh = self.beh_learner.state_of(self.flow)
        ex: _FlowState = self.ex
        st: _Flow = self.beh  # type: ignore[assignment]
        plans = self.plans
        n = self.n
        # The behaviour learner's per-packet fields, kept in locals and stored back at the
        # end (its sample buffers are only swapped by spill(), between calls).
        if st.first_ts is None:
            st.first_ts = packets[0][1]
        bn = st.n
        prev = st.prev_ts
        idle = st.src.idle.values
        gaps = st.src.status_gaps.values
        for sender, ts, pkt in packets:
            t = pkt.type
            code = t
            if pkt.__class__ is _FRAMED:
                f = pkt.frame
                if f is not None:
                    code = (t << 16) | (f.kind << 8) | f.opcode
            if sender == CLOUD:
                code |= _CLOUD_BIT
            plan = plans.get(code)
            if plan is None:
                plan = self._plan(code, sender, pkt)
            key, cell, maybe_local, queue, adds, last, ident = plan

            # -- ExchangeLearner.feed_state -----------------------------------------------------
            cell[0] += 1
            if maybe_local:
                stats = ex.stats
                if not stats.local and _local_peer(pkt):
                    stats.local = True
            if last is not None and isinstance(pkt, _FRAMED):
                mid = pkt.msg_id
                c = (mid[0] << 8) | mid[1]
                before = last[0]
                if before is not None:
                    step = last[1]
                    step[0] += 1
                    step[1] += (c - before) & 0xFFFF == 1
                last[0] = c

            # -- FlowPairer.feed (an exact flow: the oldest request waiting is taken) -----------
            n += 1
            if queue is not None:
                order = queue.order
                if order and ts - order[0][_TS] > MAX_WAIT:
                    queue.expire(ts)
                if queue.live:
                    e: _Entry | None = None
                    if queue.fifo:  # the oldest entry expecting an answer (live > 0: one is)
                        e = order[0]
                        while e[_LEFT] <= 0:
                            order.popleft()
                            e = order[0]
                        left = e[_LEFT] - 1
                        e[_LEFT] = left
                        if not left:
                            queue.live -= 1
                            order.popleft()
                        _pair(ex, n, e, ts, pkt, key, e[_TARGET][_T_TIMES] - left - 1)
                    else:
                        k = queue.keyof(pkt)  # type: ignore[misc]  # keyed: not None
                        if k is not None:
                            # A bucket holds its entries that still expect an answer, oldest
                            # first (an answered one leaves it at once).
                            buckets = queue.buckets
                            bucket = buckets.get(k)
                            if bucket:
                                e = bucket[0]
                            if queue.group:  # group commands answer any node: oldest of both
                                g = buckets.get(_GROUP)
                                if g and (e is None or g[0][_SEQ] < e[_SEQ]):
                                    e, k, bucket = g[0], _GROUP, g
                            if e is not None:
                                left = e[_LEFT] - 1
                                e[_LEFT] = left
                                if not left:
                                    queue.live -= 1
                                    bucket.popleft()  # type: ignore[union-attr]  # e: in it
                                    if not bucket:
                                        del buckets[k]
                                    # Answered entries at the head of ``order`` go now
                                    # (expiring them would do nothing else).
                                    while order and order[0][_LEFT] <= 0:
                                        order.popleft()
                                _pair(ex, n, e, ts, pkt, key, e[_TARGET][_T_TIMES] - left - 1)
            if adds:
                req = [False, ts, pkt, None]
                for q, keyof, times, target in adds:
                    order = q.order
                    if order and ts - order[0][_TS] > MAX_WAIT:
                        q.expire(ts)
                    if keyof is None:
                        order.append([times, ts, n, q.live, req, None, target])
                    else:
                        ikey = keyof(pkt)
                        if ikey is None:
                            # No key to be echoed (malformed, not a command): never matched, but
                            # it waits, so the depth of later requests counts it.
                            ikey = _NEVER
                        e = [times, ts, n, q.live, req, ikey, target]
                        order.append(e)
                        bucket = q.buckets.get(ikey)
                        if bucket is None:
                            q.buckets[ikey] = bucket = deque()
                        bucket.append(e)
                    q.live += 1

            # -- BehaviourLearner.feed_state (an exact flow) ------------------------------------
            bn += 1
            if ident and (
                pkt.__class__ is _HELLO
                or (
                    isinstance(pkt, _FRAMED)
                    and ((pkt.frame is not None and pkt.frame.kind == _REPORT_KIND) or t == _STATUS)
                )
                or (t == _STATUS and isinstance(pkt, IdPacket))
            ):
                st.n = bn  # _identity tells the packets apart by their number
                self.beh_learner._identity(st.flow.source, pkt, st)
            if sender != DEVICE:
                prev = ts
                st.answered = True
                continue
            if t == _PING:
                if prev is not None:
                    idle.append(ts - prev)
            elif t == _STATUS:
                if st.last_status is not None:
                    gaps.append(ts - st.last_status)
                st.last_status = ts
            prev = ts
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
        self.n = n
        st.n = bn
        st.prev_ts = prev


def _pair(state: _FlowState, n: int, e: _Entry, ts: float, pkt: CyncPacket, rk: str,
          occ: int) -> None:  # fmt: skip
    """_FlowState._pair: the request of entry ``e`` answered by ``pkt`` (packet ``n`` of the
    flow), its ``occ``-th answer of kind ``rk``."""
    st = state.stats
    req = e[_REQ]
    target = e[_TARGET]
    rq_ts = req[1]
    kinds = target[_T_KINDS]
    kind = kinds[occ]
    if kind is None:
        name = (target[_T_KEY], rk, occ)
        kind = st.kinds.get(name)
        if kind is None:
            kind = st.kinds[name] = _Kind(
                name, CLOUD if target[_T_ANSWERED][0] == DEVICE else DEVICE
            )
        kinds[occ] = kind
    lat = ts - rq_ts
    kind.latency.values.append(lat)
    kn = kind.n = kind.n + 1
    pairs = kind.pairs
    if kn == kind.next:  # _Kind.keep, inlined while the pairs are few
        if len(pairs) < TEMPLATE_PAIRS:
            pairs.append(((0, 0, n), req[2], pkt, state))
            kind.next = kn + kind.stride
        else:
            kind.keep(((0, 0, n), req[2], pkt, state))
    if not req[0]:
        req[0] = True
        st.answered[target[_T_ANSWERED]] += 1
    before = req[3]
    req[3] = ts
    if occ:
        return
    out = target[_T_OUT]
    if out is None:
        kr = (target[_T_KEY], rk)
        out = state.outstanding.get(kr)
        if out is None:
            out = state.outstanding[kr] = _Outstanding(st, kr, True)
        target[_T_OUT] = out
    depth = e[_DEPTH]
    b = "0" if depth == 0 else ("1-4" if depth < 5 else "5+")
    smp = out.buckets.get(b)
    if smp is None:
        smp = out.buckets[b] = Samples()
    smp.values.append(lat)
    svc = out.service
    if svc is not None:
        prev = state.prev.get(rk)
        if before is None:
            start = rq_ts if prev is None or prev < rq_ts else prev
            svc.values.append(max(0.0, ts - start))
        else:  # a later answer: the work after the request's previous answer left
            svc.values.append(max(0.0, ts - before))
        if rk == "0x7b":
            state.stalls.add(target[_T_KEY], rq_ts, ts, prev, depth)  # stalls.py
        elif before is not None:
            state.stalls.result(rq_ts, before, ts)
        state.prev[rk] = ts
