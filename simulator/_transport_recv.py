# The receive side of ReliableTransport: packet dispatching, answers, ACK/result matching and
# the inbox that ``recv_reliable`` reads.
#
# Strategy: incoming packets are dispatched synchronously from the protocol callback
# (DeviceLink) through one table keyed by packet type, filled by ReliableTransport.  The
# controller answers what devices send (0x23 -> 0x28, 0x43 -> 0x48, 0x83 -> 0x88, 0xD3 -> 0xD8,
# 0xC3 -> 0xC8); a 0x7B resolves the open exchange whose bytes 5-11 it echoes, an f9 result the
# one waiting for its sequence byte.  0x83 reports are de-duplicated by a bounded LRU, and what
# nobody consumed goes to the bounded inbox.  TransportReceiver is a mixin: ReliableTransport
# owns the state it uses (declared below for the type checker).  Private module: import
# ReliableTransport from cyncsim.simulator.transport.
from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

from cyncsim.replay.errors import CyncError, PacketDecodeError
from cyncsim.replay.payloads import TimeReply, build_ack_for, build_simple, build_time_reply
from cyncsim.replay.protocol import (
    CyncPacket,
    FramedPacket,
    FrameKind,
    HelloPacket,
    IdPacket,
    PacketType,
)
from cyncsim.simulator._transport_conn import ConnectionManager, TransportStats
from cyncsim.simulator._transport_link import DeviceLink, Inbox

__all__ = ["TransportReceiver", "time_reply_bytes"]

_HELLO_ACK = build_simple(PacketType.HELLO_ACK).encode()
_STATUS_ACK = build_simple(PacketType.STATUS_ACK).encode()
_PONG = build_simple(PacketType.PONG).encode()
_HEX = frozenset(b"0123456789abcdefABCDEF")
_Outcome = CyncPacket | str  # what an exchange's futures resolve to: a packet or a failure reason


@dataclass(slots=True, eq=False)
class _Pending:
    key: bytes  # bytes 5-11 of the 0x73: device id + message id
    seq: int | None  # inner sequence byte awaited in the f9 result, None when not waiting
    opcode: int
    ack: asyncio.Future[_Outcome]
    result: asyncio.Future[_Outcome] | None


def time_reply_bytes(now: float) -> bytes:
    """0xC8 for local time ``now`` (PROTOCOL.md 4.3: weekday Sunday=1, UTC offset +-hhmm)."""
    tm = time.localtime(now)
    minutes = (tm.tm_gmtoff or 0) // 60
    hhmm = (-1 if minutes < 0 else 1) * ((abs(minutes) // 60) * 100 + abs(minutes) % 60)
    weekday = (tm.tm_wday + 1) % 7 + 1
    reply = TimeReply(tm.tm_year, tm.tm_mon, tm.tm_mday, weekday, tm.tm_hour, tm.tm_min,
                      tm.tm_sec, hhmm)  # fmt: skip
    return build_time_reply(reply).encode()


def _decode_error(packet: CyncPacket, offset: int, peer: str, why: str) -> PacketDecodeError:
    reason = packet.defect or "bad_layout"
    where = f"{packet.name} ({len(packet)} bytes) from {peer}"
    return PacketDecodeError(reason, f"{where}: {why}", offset=offset, data=packet.encode())


class TransportReceiver:
    """Receive side of ReliableTransport (a mixin: the state is set by its ``__init__``)."""

    stats: TransportStats
    conn_mgr: ConnectionManager
    dedup_window: int
    _clock: Callable[[], float]
    _pending: dict[bytes, _Pending]
    _result_waiters: dict[int, _Pending]
    _seen_reports: collections.OrderedDict[bytes, None]
    _inbox: Inbox
    _ping_waiters: list[asyncio.Future[_Outcome]]
    _handlers: dict[int, Callable[[DeviceLink, int, CyncPacket], None]]

    # --------------------------------------------------------------------------- receive
    async def recv_reliable(self, timeout: float | None = None) -> CyncPacket:  # noqa: ASYNC109
        """The next device packet the transport did not consume: 0x83 reports, 0x43, f9
        results nobody waited for, anything unexpected (0x83/0x43 are already answered).
        Raises PacketDecodeError for a defective packet or non-Cync bytes (the connection
        stays up), TimeoutError after ``timeout``, CyncError when closed / not connected."""
        item = await self._inbox.get(timeout, self._recv_end)
        if isinstance(item, PacketDecodeError):
            raise item
        return item

    def _recv_end(self) -> CyncError | None:
        state = self.conn_mgr.state
        if state == "closed":
            return CyncError("transport is closed", reason="closed")
        if state in ("idle", "disconnected"):
            return CyncError(f"no device connection (state {state})", reason="not_connected")
        return None

    def _deliver(self, item: CyncPacket | PacketDecodeError) -> None:
        if self._inbox.put(item):
            self.stats.recv_dropped += 1

    def internal_sizes(self) -> dict[str, int]:
        """Sizes of the internal tables: all bounded, the first four 0 when nothing waits."""
        return {
            "pending": len(self._pending),
            "result_waiters": len(self._result_waiters),
            "ping_waiters": len(self._ping_waiters),
            "inbox_waiters": self._inbox.waiters,
            "inbox": len(self._inbox),
            "dedup": len(self._seen_reports),
        }

    # ---------------------------------------------------------------- packet dispatching
    def link_error(self, error: PacketDecodeError) -> None:
        self.stats.decode_errors += 1
        self._deliver(error)

    def link_packet(self, link: DeviceLink, offset: int, packet: CyncPacket) -> None:
        ptype = packet.type
        if packet.defect is not None and ptype != PacketType.HELLO:
            if ptype == PacketType.REPORT and isinstance(packet, IdPacket):
                self._ack_report(link, packet)  # never leave a device report unanswered
            self.link_error(_decode_error(packet, offset, link.peer, packet.defect))
            return
        self._handlers.get(ptype, self._on_other)(link, offset, packet)

    def _on_other(self, link: DeviceLink, offset: int, packet: CyncPacket) -> None:
        self._deliver(packet)

    def _on_hello(self, link: DeviceLink, offset: int, packet: CyncPacket) -> None:
        problem = _hello_problem(packet)
        if link.hello is not None or link.handshaken:  # a repeated 0x23 on this connection
            self.stats.rehellos += 1
            if problem is not None:
                self.link_error(_decode_error(packet, offset, link.peer, problem))
            elif link.handshaken:
                link.write(_HELLO_ACK)  # the device still waits for a 0x28
        elif problem is not None or not isinstance(packet, HelloPacket):
            link.fail_hello(
                f"malformed 0x23 at stream offset {offset}: {problem}", "malformed_hello"
            )
        else:
            link.offer_hello(packet)

    def _on_data_ack(self, link: DeviceLink, offset: int, packet: CyncPacket) -> None:
        entry = self._pending.get(packet.encode()[5:12])
        if entry is None:
            self.stats.unmatched_acks += 1  # late (after a timeout), stale or foreign
        elif entry.ack.done():
            self.stats.duplicate_acks += 1
        else:
            entry.ack.set_result(packet)

    def _on_data(self, link: DeviceLink, offset: int, packet: CyncPacket) -> None:
        frame = packet.frame if isinstance(packet, FramedPacket) else None
        if frame is not None and frame.kind == FrameKind.RESULT:
            entry = self._result_waiters.get(frame.seq_byte)
            fut = None if entry is None or entry.opcode != frame.opcode else entry.result
            if fut is not None and not fut.done():
                self.stats.results += 1
                fut.set_result(packet)
                return
        self._deliver(packet)

    def _ack_report(self, link: DeviceLink, packet: IdPacket) -> bool:
        """Answer a 0x83 with 0x88; True when it is new (not in the de-duplication window)."""
        link.write(build_ack_for(packet).encode())
        key, seen = packet.device_id + packet.msg_id, self._seen_reports
        if key in seen:
            seen.move_to_end(key)
            self.stats.duplicate_reports += 1
            return False
        seen[key] = None
        if len(seen) > self.dedup_window:
            seen.popitem(last=False)
        return True

    def _on_report(self, link: DeviceLink, offset: int, packet: CyncPacket) -> None:
        if isinstance(packet, IdPacket) and self._ack_report(link, packet):
            self.stats.reports += 1
            self._deliver(packet)

    def _on_status(self, link: DeviceLink, offset: int, packet: CyncPacket) -> None:
        link.write(_STATUS_ACK)
        self.stats.status_packets += 1
        self._deliver(packet)

    def _on_ping(self, link: DeviceLink, offset: int, packet: CyncPacket) -> None:
        link.write(_PONG)
        self.stats.pings_answered += 1
        for fut in self._ping_waiters:
            if not fut.done():
                fut.set_result(packet)

    def _on_time_request(self, link: DeviceLink, offset: int, packet: CyncPacket) -> None:
        link.write(time_reply_bytes(self._clock()))
        self.stats.time_replies += 1

    def _on_control_ack(self, link: DeviceLink, offset: int, packet: CyncPacket) -> None:
        if not link.offer_control_answer(packet):
            self._deliver(packet)


def _hello_problem(pkt: CyncPacket) -> str | None:
    if pkt.defect is not None or not isinstance(pkt, HelloPacket):
        return f"layout of the {len(pkt)}-byte 0x23 is wrong ({pkt.defect})"
    if len(pkt.auth_code) != 16 or not set(pkt.auth_code) <= _HEX:
        return f"auth code {pkt.auth_code!r} is not 16 hex characters"
    return None
