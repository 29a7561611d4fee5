# The controller's protocol logic, without I/O: ReliableTransport's sans-IO core.
#
# Strategy (after h11's ``_state.py`` and ``Connection``): everything here is tables and plain
# data; the asyncio layer (cyncsim.simulator.transport) feeds it packets and the current time
# and acts on what it answers.
#   * Connection states are ``ConnState`` members; ``TRANSITIONS`` lists where each may go and
#     ``ConnectionState.move_to`` raises ``IllegalTransition`` for anything else.  What a
#     state means for callers (a command's refusal reason, the end of a read) is a table too.
#   * ``AUTO_ANSWERS``: the device packets the controller answers by itself, and with what
#     (PROTOCOL.md 4-6: 0x23 -> 0x28, 0x43 -> 0x48, 0x83 -> 0x88 echoing its message id,
#     0xD3 -> 0xD8, 0xC3 -> 0xC8 with the local time passed in).
#   * ``Controller`` holds the exchange table (open 0x73 commands keyed by ``exchange_key``,
#     settled by the 0x7B that echoes it; f9 results by the inner sequence byte, PROTOCOL.md 8),
#     the 0x83 de-duplication LRU and the message-id / sequence counters.  ``receive`` turns a
#     device packet into a ``Reaction``: which ``Verdict``, the auto-answer to write, and the
#     exchange it settled.  Each exchange carries an opaque ``waiter`` for the I/O layer.
from __future__ import annotations

import collections
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from cyncsim.replay.errors import CyncError, PacketDecodeError
from cyncsim.replay.payloads import TimeReply, build_ack_for, build_simple, build_time_reply
from cyncsim.replay.protocol import (
    CyncPacket,
    FramedPacket,
    FrameKind,
    HelloPacket,
    IdPacket,
    PacketType,
    exchange_key,
)

__all__ = [
    "AUTO_ANSWERS",
    "BEFORE_HELLO",
    "HELLO_ACK",
    "TRANSITIONS",
    "ConnMode",
    "ConnState",
    "ConnectionState",
    "Controller",
    "Exchange",
    "IllegalTransition",
    "Outcome",
    "Reaction",
    "Verdict",
    "auto_answer",
    "control_answer_problem",
    "decode_error",
    "hello_problem",
    "time_reply_bytes",
]

W = TypeVar("W")
Outcome = CyncPacket | str  # how an exchange's ack or result settled: a packet or a failure reason


# ------------------------------------------------------------------------ connection states
class ConnState(Enum):
    """State of one controller <-> device connection (``str()`` gives the value)."""

    IDLE = "idle"  # never connected
    CONNECTING = "connecting"  # connect mode: dialling the device
    LISTENING = "listening"  # serve mode: no device connected
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DISCONNECTED = "disconnected"  # connect mode: failed or given up
    CLOSED = "closed"

    def __str__(self) -> str:
        return self.value

    @property
    def refusal(self) -> str | None:
        """Why a command is refused in this state (None: commands may be sent)."""
        return _REFUSALS.get(self, "not_connected")

    @property
    def read_end(self) -> str | None:
        """Reason a read of the inbox ends in this state once it is empty (None: wait on)."""
        return _READ_ENDS.get(self)


class ConnMode(Enum):
    CONNECT = "connect"  # the controller dials a listening device
    SERVE = "serve"  # the controller listens and the device dials

    def __str__(self) -> str:
        return self.value


_S = ConnState
TRANSITIONS: dict[ConnState, frozenset[ConnState]] = {
    _S.IDLE: frozenset({_S.CONNECTING, _S.LISTENING, _S.CLOSED}),
    _S.CONNECTING: frozenset({_S.CONNECTED, _S.DISCONNECTED, _S.RECONNECTING, _S.CLOSED}),
    _S.LISTENING: frozenset({_S.CONNECTED, _S.RECONNECTING, _S.CLOSED}),
    _S.CONNECTED: frozenset({_S.RECONNECTING, _S.LISTENING, _S.DISCONNECTED, _S.CLOSED}),
    _S.RECONNECTING: frozenset({_S.CONNECTED, _S.LISTENING, _S.DISCONNECTED, _S.CLOSED}),
    _S.DISCONNECTED: frozenset({_S.CONNECTING, _S.RECONNECTING, _S.CLOSED}),
    _S.CLOSED: frozenset(),
}
_REFUSALS: dict[ConnState, str | None] = {_S.CONNECTED: None, _S.RECONNECTING: "reconnecting"}
_READ_ENDS = {_S.CLOSED: "closed", _S.IDLE: "not_connected", _S.DISCONNECTED: "not_connected"}


class IllegalTransition(CyncError):
    """A move between connection states that ``TRANSITIONS`` does not allow."""

    reason = "illegal_transition"

    def __init__(self, old: ConnState, new: ConnState) -> None:
        super().__init__(f"connection state {old} cannot become {new}")
        self.old, self.new = old, new


class ConnectionState:
    """The state and mode of one connection; it only moves along ``TRANSITIONS``."""

    __slots__ = ("mode", "state")

    def __init__(self) -> None:
        self.state = ConnState.IDLE
        self.mode: ConnMode | None = None

    def can_move_to(self, new: ConnState) -> bool:
        return new is self.state or new in TRANSITIONS[self.state]

    def move_to(self, new: ConnState) -> bool:
        """Enter ``new``; False when already there, IllegalTransition when not allowed."""
        if new is self.state:
            return False
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(self.state, new)
        self.state = new
        return True


# ------------------------------------------------------------------------------ auto-answers
HELLO_ACK = build_simple(PacketType.HELLO_ACK).encode()
_STATUS_ACK = build_simple(PacketType.STATUS_ACK).encode()
_PONG = build_simple(PacketType.PONG).encode()
_HEX = frozenset(b"0123456789abcdefABCDEF")
# What a device may send before its 0x23 without breaking the handshake (PROTOCOL.md 4.1, 10.3).
BEFORE_HELLO = frozenset(
    {PacketType.HELLO, PacketType.STATUS, PacketType.PING, PacketType.TIME_REQUEST}
)


def time_reply_bytes(now: float) -> bytes:
    """0xC8 for local time ``now`` (PROTOCOL.md 4.3: weekday Sunday=1, UTC offset +-hhmm)."""
    tm = time.localtime(now)
    minutes = (tm.tm_gmtoff or 0) // 60
    hhmm = (-1 if minutes < 0 else 1) * ((abs(minutes) // 60) * 100 + abs(minutes) % 60)
    weekday = (tm.tm_wday + 1) % 7 + 1
    reply = TimeReply(tm.tm_year, tm.tm_mon, tm.tm_mday, weekday, tm.tm_hour, tm.tm_min,
                      tm.tm_sec, hhmm)  # fmt: skip
    return build_time_reply(reply).encode()


def _report_ack(packet: CyncPacket, now: float) -> bytes:
    if not isinstance(packet, IdPacket):
        raise TypeError(f"a 0x83 without its message id cannot be acked: {packet!r}")
    return build_ack_for(packet).encode()


# Device packet type -> the controller's answer (the packet and the current time in).  The
# 0x28 is written by the handshake (the first one) and for a repeated 0x23 once handshaken.
AUTO_ANSWERS: dict[int, Callable[[CyncPacket, float], bytes]] = {
    PacketType.HELLO: lambda packet, now: HELLO_ACK,
    PacketType.STATUS: lambda packet, now: _STATUS_ACK,
    PacketType.REPORT: _report_ack,
    PacketType.PING: lambda packet, now: _PONG,
    PacketType.TIME_REQUEST: lambda packet, now: time_reply_bytes(now),
}


def auto_answer(packet: CyncPacket, now: float) -> bytes | None:
    """The bytes the controller answers ``packet`` with by itself; None for no answer."""
    answer = AUTO_ANSWERS.get(packet.type)
    return None if answer is None else answer(packet, now)


# ------------------------------------------------------------------------ handshake checks
def hello_problem(packet: CyncPacket) -> str | None:
    """Why a 0x23 cannot be accepted (layout, auth code), None when it is fine."""
    if packet.defect is not None or not isinstance(packet, HelloPacket):
        return f"layout of the {len(packet)}-byte 0x23 is wrong ({packet.defect})"
    if len(packet.auth_code) != 16 or not set(packet.auth_code) <= _HEX:
        return f"auth code {packet.auth_code!r} is not 16 hex characters"
    return None


def control_answer_problem(request: IdPacket, answer: CyncPacket) -> str | None:
    """Why ``answer`` is not the 0xAB that echoes the 0xA3 ``request`` (PROTOCOL.md 4.4)."""
    want = exchange_key(request.encode())
    got = answer.encode()
    if answer.type == PacketType.CONTROL_ACK and exchange_key(got) == want:
        return None
    return f"not a 0xAB echoing {want.hex(' ')}: {got[:12].hex(' ')}"


def decode_error(packet: CyncPacket, offset: int, peer: str, why: str) -> PacketDecodeError:
    """The error delivered to the reader for a defective packet at stream ``offset``."""
    reason = packet.defect or "bad_layout"
    where = f"{packet.name} ({len(packet)} bytes) from {peer}"
    return PacketDecodeError(reason, f"{where}: {why}", offset=offset, data=packet.encode())


# ------------------------------------------------------------------------------- exchanges
@dataclass(slots=True, eq=False)
class Exchange(Generic[W]):
    """One open 0x73 command: settled by its 0x7B and, when ``seq`` is set, its f9 result."""

    key: bytes  # exchange_key of the 0x73: device id + message id
    seq: int | None  # inner sequence byte awaited in the f9 result, None when not waiting
    opcode: int
    waiter: W  # the I/O layer's handle, woken when ``ack`` or ``result`` settles
    ack: Outcome | None = None
    result: Outcome | None = None


class Verdict(Enum):
    """What ``Controller.receive`` made of a device packet."""

    HELLO = "hello"  # a 0x23: for the handshake (``problem`` set when malformed)
    ACKED = "acked"  # a 0x7B settled ``exchange.ack``
    DUPLICATE_ACK = "duplicate_ack"  # a 0x7B for an exchange already settled
    UNMATCHED_ACK = "unmatched_ack"  # a 0x7B for no open exchange (late, stale or foreign)
    RESULT = "result"  # an f9 settled ``exchange.result``
    REPORT = "report"  # a new 0x83 (answered): deliver
    DUPLICATE_REPORT = "duplicate_report"  # a 0x83 seen before (answered again): drop
    STATUS = "status"  # a 0x43 (answered): deliver
    PING = "ping"  # a 0xD3 (answered): wake heartbeat waiters
    TIME_REQUEST = "time_request"  # a 0xC3 (answered)
    CONTROL_ANSWER = "control_answer"  # a 0xAB: for the handshake, else deliver
    OTHER = "other"  # anything else: deliver
    DEFECT = "defect"  # a defective packet (``problem`` says why): deliver an error


@dataclass(frozen=True, slots=True)
class Reaction(Generic[W]):
    """The controller's reaction to one device packet; write ``reply`` first."""

    verdict: Verdict
    reply: bytes | None = None
    exchange: Exchange[W] | None = None
    problem: str | None = None
    repeated_report: bool = False  # a defective 0x83 already seen (answered again)


class Controller(Generic[W]):
    """Exchange table, auto-answers and report de-duplication of one controller."""

    def __init__(self, *, max_pending: int = 256, dedup_window: int = 1024) -> None:
        self.max_pending = max_pending
        self.dedup_window = dedup_window
        self._pending: dict[bytes, Exchange[W]] = {}
        self._result_waiters: dict[int, Exchange[W]] = {}
        self._seen_reports: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._msg_counter = 0
        self._seq_counter = 0

    def sizes(self) -> dict[str, int]:
        return {
            "pending": len(self._pending),
            "result_waiters": len(self._result_waiters),
            "dedup": len(self._seen_reports),
        }

    # -- sending side
    def next_seq(self) -> int | None:
        """A free inner sequence byte for a new command; None when all 256 are awaited."""
        for _ in range(256):
            self._seq_counter = (self._seq_counter + 1) & 0xFF
            if self._seq_counter not in self._result_waiters:
                return self._seq_counter
        return None

    def next_msg_id(self, device_id: bytes) -> bytes:
        """The next message id (own counter, byte 11 = 0) that no open exchange uses."""
        while True:  # terminates: at most max_pending (<= 32768) of 65536 ids are in use
            self._msg_counter = (self._msg_counter + 1) & 0xFFFF
            msg_id = struct.pack(">HB", self._msg_counter, 0)
            if device_id + msg_id not in self._pending:
                return msg_id

    def open(self, key: bytes, seq: int | None, opcode: int, waiter: W) -> Exchange[W] | str:
        """Open an exchange, or say why not: ``id_in_use`` or ``backpressure``."""
        if key in self._pending or (seq is not None and seq in self._result_waiters):
            return "id_in_use"
        if len(self._pending) >= self.max_pending:
            return "backpressure"
        exchange = Exchange(key, seq, opcode, waiter)
        self._pending[key] = exchange
        if seq is not None:
            self._result_waiters[seq] = exchange
        return exchange

    def finish(self, exchange: Exchange[W]) -> None:
        """Forget ``exchange``: later answers to it count as unmatched."""
        if self._pending.get(exchange.key) is exchange:
            del self._pending[exchange.key]
        seq = exchange.seq
        if seq is not None and self._result_waiters.get(seq) is exchange:
            del self._result_waiters[seq]

    def fail_open(self, reason: str) -> list[Exchange[W]]:
        """Settle every unsettled ack and awaited result with ``reason``; the ones changed."""
        changed = []
        for exchange in self._pending.values():
            settle_result = exchange.seq is not None and exchange.result is None
            if exchange.ack is None or settle_result:
                changed.append(exchange)
            if exchange.ack is None:
                exchange.ack = reason
            if settle_result:
                exchange.result = reason
        return changed

    # -- receiving side
    def receive(self, packet: CyncPacket, now: float) -> Reaction[W]:
        """Match, answer and classify one device packet (``now`` for a 0xC8 reply)."""
        ptype = packet.type
        if packet.defect is not None and ptype != PacketType.HELLO:
            if ptype == PacketType.REPORT and isinstance(packet, IdPacket):
                # Never leave a device report unanswered, even a defective one.
                repeated = not self._is_new_report(packet)
                return Reaction(Verdict.DEFECT, _report_ack(packet, now), None, packet.defect,
                                repeated)  # fmt: skip
            return Reaction(Verdict.DEFECT, None, None, packet.defect)
        return _RECEIVERS.get(ptype, Controller._other)(self, packet, now)

    def _other(self, packet: CyncPacket, now: float) -> Reaction[W]:
        return _OTHER

    def _hello(self, packet: CyncPacket, now: float) -> Reaction[W]:
        return Reaction(Verdict.HELLO, None, None, hello_problem(packet))

    def _data_ack(self, packet: CyncPacket, now: float) -> Reaction[W]:
        exchange = self._pending.get(exchange_key(packet.encode()))
        if exchange is None:
            return _UNMATCHED_ACK
        if exchange.ack is not None:
            return Reaction(Verdict.DUPLICATE_ACK, None, exchange)
        exchange.ack = packet
        return Reaction(Verdict.ACKED, None, exchange)

    def _data(self, packet: CyncPacket, now: float) -> Reaction[W]:
        frame = packet.frame if isinstance(packet, FramedPacket) else None
        if frame is not None and frame.kind == FrameKind.RESULT:
            exchange = self._result_waiters.get(frame.seq_byte)
            matches = exchange is not None and exchange.opcode == frame.opcode
            if exchange is not None and matches and exchange.result is None:
                exchange.result = packet
                return Reaction(Verdict.RESULT, None, exchange)
        return _OTHER

    def _is_new_report(self, packet: IdPacket) -> bool:
        key, seen = packet.device_id + packet.msg_id, self._seen_reports
        if key in seen:
            seen.move_to_end(key)
            return False
        seen[key] = None
        if len(seen) > self.dedup_window:
            seen.popitem(last=False)
        return True

    def _report(self, packet: CyncPacket, now: float) -> Reaction[W]:
        if not isinstance(packet, IdPacket):
            return _OTHER
        new = self._is_new_report(packet)
        verdict = Verdict.REPORT if new else Verdict.DUPLICATE_REPORT
        return Reaction(verdict, auto_answer(packet, now))

    def _status(self, packet: CyncPacket, now: float) -> Reaction[W]:
        return Reaction(Verdict.STATUS, auto_answer(packet, now))

    def _ping(self, packet: CyncPacket, now: float) -> Reaction[W]:
        return Reaction(Verdict.PING, auto_answer(packet, now))

    def _time_request(self, packet: CyncPacket, now: float) -> Reaction[W]:
        return Reaction(Verdict.TIME_REQUEST, auto_answer(packet, now))

    def _control_answer(self, packet: CyncPacket, now: float) -> Reaction[W]:
        return _CONTROL_ANSWER


_OTHER: Reaction[Any] = Reaction(Verdict.OTHER)
_UNMATCHED_ACK: Reaction[Any] = Reaction(Verdict.UNMATCHED_ACK)
_CONTROL_ANSWER: Reaction[Any] = Reaction(Verdict.CONTROL_ANSWER)
# Device packet type -> how the controller takes it (one table, no elif chain over types); the
# answers written are those of AUTO_ANSWERS.
_RECEIVERS: dict[int, Callable[[Controller[Any], CyncPacket, float], Reaction[Any]]] = {
    PacketType.HELLO: Controller._hello,
    PacketType.DATA_ACK: Controller._data_ack,
    PacketType.DATA: Controller._data,
    PacketType.REPORT: Controller._report,
    PacketType.STATUS: Controller._status,
    PacketType.PING: Controller._ping,
    PacketType.TIME_REQUEST: Controller._time_request,
    PacketType.CONTROL_ACK: Controller._control_answer,
}
