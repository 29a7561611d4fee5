# Indexed pairing of requests and responses, one packet at a time, per flow.
#
# Strategy: which kinds may answer which is declared once as data (PROTOCOL.md section 8),
# with the bytes a response echoes from its request where the protocol echoes any: the
# exchange key (0x7B/0xAB echo bytes 5-11, 0x88 echoes 9-11 as 5-7, 0x78 echoes 5-10), the
# inner +1 byte of an f9 result, or the mesh node a 0x83 status reports (a command's target).
# A response looks up only the requests waiting under its key, in arrival order (FIFO within
# equal keys); a kind without an echo is FIFO per kind and connection.  So a response costs
# a dictionary lookup, never a scan over all pending requests.  A request older than
# MAX_WAIT is given up (a time-ordered deque per queue drops it from its bucket), so what is
# kept is bounded by the requests of the last MAX_WAIT seconds.  In a flow that mixes
# connections (text logs without conn ids) a response with more than one candidate is
# dropped as ambiguous rather than guessed.  Every packet is decoded once, by the reader;
# the key of a request is computed once, when it arrives.
from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable

from cyncsim.replay.capture.model import CLOUD, DEVICE, FlowPacket
from cyncsim.replay.payloads import decode_command, decode_status_report
from cyncsim.replay.protocol import AckPacket, CyncPacket, FramedPacket, IdPacket

__all__ = ["MAX_WAIT", "FlowPairer", "Pending", "candidates", "other_side"]

MAX_WAIT = 10.0  # outstanding requests older than this are given up

KeyOf = Callable[[CyncPacket], object]  # packet -> index key, or None for "no key"


def _prefix(n: int) -> KeyOf:
    """Packet bytes 5 .. 5+n (device id, message id), from the decoded fields."""

    def key(pkt: CyncPacket) -> object:
        if isinstance(pkt, IdPacket):
            head = pkt.device_id + pkt.msg_id
        elif isinstance(pkt, AckPacket):  # 0x88: its message id is bytes 5-7
            head = pkt.msg_id
        else:
            head = pkt.encode()[5:]
        return head[:n] if len(head) >= n else None

    return key


def _msg_id(pkt: CyncPacket) -> object:  # packet bytes 9-11 of a 0x83
    return pkt.msg_id if isinstance(pkt, IdPacket) and len(pkt.msg_id) == 3 else None


def _frame_seq(pkt: CyncPacket) -> object:  # packet bytes 13-16: the inner +1 byte and zeros
    return pkt.frame.seq if isinstance(pkt, FramedPacket) and pkt.frame is not None else None


def _command_target(pkt: CyncPacket) -> object:
    if not isinstance(pkt, FramedPacket) or pkt.frame is None:
        return None
    cmd = decode_command(pkt.frame)
    if cmd is None:
        return None
    return _GROUP if cmd.is_group else cmd.target


def _reported_node(pkt: CyncPacket) -> object:
    status = decode_status_report(pkt)
    return None if status is None else status.node_id


_GROUP = "group"  # a group command is answered by a status report of any node
_FIFO: tuple[KeyOf, KeyOf] | None = None
_PREFIX = (_prefix(7), _prefix(7))  # (request key, response key)
_NODE = (_command_target, _reported_node)

# (request side, request key or prefix*, [(response key, times, (request key, response key)
# or None for FIFO)]).  ``times``: how many of that response one request may get (f9 52
# answers f8 52 twice); whether, how often, with which bytes and how fast a candidate really
# answers is learned from the captures.
_Keys = tuple[KeyOf, KeyOf] | None
_CANDIDATES: tuple[tuple[str, str, tuple[tuple[str, int, _Keys], ...]], ...] = (
    (DEVICE, "0x23", (("0x28", 1, _FIFO),)),
    (DEVICE, "0xc3", (("0xc8", 1, _FIFO),)),
    (DEVICE, "0xd3", (("0xd8", 1, _FIFO),)),
    (DEVICE, "0x43", (("0x48", 1, _FIFO),)),
    (DEVICE, "0x83:*", (("0x88", 1, (_msg_id, _prefix(3))),)),
    (DEVICE, "0x7b", (("0x78", 1, (_prefix(6), _prefix(6))),)),
    (CLOUD, "0xa3", (("0xab", 1, _PREFIX),)),
    (CLOUD, "0x73", (("0x7b", 1, _PREFIX),)),  # a malformed 0x73 still gets its 0x7B
    (
        CLOUD,
        "0x73:f8:*",
        (
            ("0x7b", 1, _PREFIX),
            ("0x73:f9:{op}", 2, (_frame_seq, _frame_seq)),  # the inner +1 byte
            ("0x83:fa:db", 1, _NODE),
        ),
    ),
)  # fmt: skip

Candidate = tuple[str, int, _Keys]
_cand_cache: dict[tuple[str, str], list[Candidate]] = {}


def candidates(side: str, key: str) -> list[Candidate]:
    """The responses a request of ``key`` from ``side`` may get (empty: not a request)."""
    got = _cand_cache.get((side, key))
    if got is not None:
        return got
    out: list[Candidate] = []
    for cside, pattern, rks in _CANDIDATES:
        if cside != side:
            continue
        if pattern == key or (pattern.endswith("*") and key.startswith(pattern[:-1])):
            op = key.rsplit(":", 1)[-1]
            out = [(rk.replace("{op}", op), times, keys) for rk, times, keys in rks]
            break
    _cand_cache[(side, key)] = out
    return out


def other_side(side: str) -> str:
    return CLOUD if side == DEVICE else DEVICE


class Pending:
    """One request waiting for its responses (``expected`` is shared by the requests of a
    kind on a flow: read only)."""

    __slots__ = ("answered", "depth", "expected", "fp", "key", "last_answer", "remaining", "seq")

    def __init__(
        self,
        fp: FlowPacket,
        key: str,
        seq: int,  # arrival order within the flow
        expected: dict[str, int],
        remaining: dict[str, int],
    ) -> None:
        self.fp = fp
        self.key = key
        self.seq = seq
        self.expected = expected
        self.remaining = remaining
        self.depth: dict[str, int] = {}  # requests still waiting, at arrival
        self.answered = False
        self.last_answer: float | None = None  # when its latest answer left


class _Queue:
    """Requests waiting for one response kind on one flow, indexed by their echo key."""

    __slots__ = ("buckets", "live", "order", "rk")

    def __init__(self, rk: str) -> None:
        self.rk = rk
        self.buckets: dict[object, deque[Pending]] = {}
        # (arrival time, request, key) in arrival order, for expiry
        self.order: deque[tuple[float, Pending, object]] = deque()
        self.live = 0  # entries still expecting this response, not expired

    def expire(self, now: float) -> None:
        order, rk = self.order, self.rk
        while order and now - order[0][0] > MAX_WAIT:
            _, p, key = order.popleft()
            if p.remaining.get(rk, 0) > 0:
                self.live -= 1
            bucket = self.buckets.get(key)
            if bucket is not None:
                while bucket and bucket[0].seq <= p.seq:
                    bucket.popleft()
                if not bucket:
                    del self.buckets[key]

    def add(self, p: Pending, key: object) -> None:
        self.order.append((p.fp.ts, p, key))
        bucket = self.buckets.get(key)
        if bucket is None:
            self.buckets[key] = bucket = deque()
        bucket.append(p)
        self.live += 1

    def first(self, key: object) -> Pending | None:
        """The oldest request under ``key`` still expecting this response."""
        bucket = self.buckets.get(key)
        if not bucket:
            return None
        rk = self.rk
        while bucket and bucket[0].remaining.get(rk, 0) <= 0:
            bucket.popleft()
        return bucket[0] if bucket else None

    def first_two(self, key: object) -> list[Pending]:
        """The oldest two requests under ``key`` still expecting this response."""
        p = self.first(key)
        if p is None:
            return []
        bucket = self.buckets[key]
        rk = self.rk
        for q in itertools.islice(bucket, 1, None):
            if q.remaining.get(rk, 0) > 0:
                return [p, q]
        return [p]

    def consume(self, p: Pending) -> None:
        p.remaining[self.rk] -= 1
        if p.remaining[self.rk] == 0:
            self.live -= 1


Match = Callable[[Pending, FlowPacket, str, int, int], None]  # (req, resp, rk, occ, depth)
# What a packet of one (sender, key) does on a flow, worked out once: the queue it answers
# (with how its echo key is read) and, for a request, the response kinds it waits for.
_Adds = tuple[tuple[str, _Queue, KeyOf | None], ...]
_Plan = tuple[tuple[_Queue, KeyOf | None] | None, _Adds, dict[str, int]]


class FlowPairer:
    """Pairs the packets of one flow as they come (in capture-time order)."""

    __slots__ = ("ambiguous", "exact", "n", "on_pair", "plans", "queues")

    def __init__(self, exact: bool, on_pair: Match, ambiguous: dict[tuple[str, str], int]):
        self.exact = exact
        self.on_pair = on_pair
        self.ambiguous = ambiguous  # (request side, request key) -> responses dropped
        self.queues: dict[tuple[str, str], tuple[_Queue, KeyOf | None]] = {}
        self.plans: dict[tuple[str, str], _Plan] = {}
        self.n = 0

    def _plan(self, sender: str, key: str) -> _Plan:
        cands = candidates(sender, key)
        side = other_side(sender)
        adds = []
        for rk, _times, keys in sorted(cands, key=lambda c: c[0]):
            entry = self.queues.get((side, rk))
            if entry is None:
                entry = self.queues[(side, rk)] = (_Queue(rk), keys[1] if keys else None)
                self.plans.clear()  # a response of that kind now has a queue to answer
            adds.append((rk, entry[0], keys[0] if keys else None))
        expected = {rk: (times if keys else 1) for rk, times, keys in cands}
        plan = (self.queues.get((sender, key)), tuple(adds), expected)
        self.plans[(sender, key)] = plan
        return plan

    def feed(self, fp: FlowPacket, key: str) -> None:
        self.n += 1
        plan = self.plans.get((fp.sender, key))
        if plan is None:
            plan = self._plan(fp.sender, key)
        match, adds, expected = plan
        if match is not None:
            self._match(fp, key, match[0], match[1])
        if not adds:
            return
        pkt = fp.packet
        ts = fp.ts
        pend = Pending(fp, key, self.n, expected, expected.copy())
        depth = pend.depth
        for rk, queue, keyof in adds:
            order = queue.order
            if order and ts - order[0][0] > MAX_WAIT:
                queue.expire(ts)
            depth[rk] = queue.live
            ikey = keyof(pkt) if keyof is not None else b""
            if ikey is None:
                # No key to be echoed (malformed, not a command): never matched, but it
                # waits as today's FIFO did, so the depth of later requests counts it.
                ikey = _NEVER
            order.append((ts, pend, ikey))  # _Queue.add, inlined
            bucket = queue.buckets.get(ikey)
            if bucket is None:
                queue.buckets[ikey] = bucket = deque()
            bucket.append(pend)
            queue.live += 1

    def _match(self, fp: FlowPacket, rk: str, queue: _Queue, keyof: KeyOf | None) -> None:
        order = queue.order
        if order and fp.ts - order[0][0] > MAX_WAIT:
            queue.expire(fp.ts)
        if not queue.live:
            return
        k: object = b""
        if keyof is not None:
            k = keyof(fp.packet)
            if k is None:
                return
        if self.exact:  # the oldest is taken: no need to know whether there are others
            chosen = None
            bucket = queue.buckets.get(k)  # _Queue.first, inlined
            if bucket:
                while bucket and bucket[0].remaining.get(rk, 0) <= 0:
                    bucket.popleft()
                if bucket:
                    chosen = bucket[0]
            if rk == "0x83:fa:db":  # group commands answer any node: oldest of both
                group = queue.first(_GROUP)
                if group is not None and (chosen is None or group.seq < chosen.seq):
                    chosen = group
            if chosen is None:
                return
            rem = chosen.remaining  # _Queue.consume, inlined
            left = rem[rk] - 1
            rem[rk] = left
            if not left:
                queue.live -= 1
            self.on_pair(chosen, fp, rk, chosen.expected[rk] - left - 1, chosen.depth.get(rk, 0))
            return
        cands = queue.first_two(k)
        if rk == "0x83:fa:db" and keyof is not None:
            cands = sorted(cands + queue.first_two(_GROUP), key=lambda p: p.seq)[:2]
        if not cands:
            return
        chosen = cands[0]
        occurrence = chosen.expected[rk] - chosen.remaining[rk]
        depth = chosen.depth.get(rk, 0)
        queue.consume(chosen)
        if len(cands) > 1:
            side_key = (chosen.fp.sender, chosen.key)
            self.ambiguous[side_key] = self.ambiguous.get(side_key, 0) + 1
            return
        self.on_pair(chosen, fp, rk, occurrence, depth)


_NEVER = object()  # the bucket of requests that nothing can answer
