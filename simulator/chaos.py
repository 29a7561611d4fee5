# Chaos on a real stream: ChaosWriter applies a policy's decisions with asyncio, and the helpers
# to reset a connection and to honour a stall.
#
# Strategy: everything that decides is pure and lives in cyncsim.replay.chaos (ChaosConfig,
# ChaosPolicy, Direction, Emission); this module only moves bytes in time: ChaosWriter keeps
# one heap of pending writes ordered by (due time, arrival order) and one loop timer for the
# earliest, writes the pieces of a sliced packet back to back without letting another packet
# in between, and close() cancels its timers, so it never leaves a task behind.
from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import socket
import struct
from collections.abc import Callable
from typing import Protocol

from cyncsim.replay.chaos import ChaosPolicy, Direction, Emission

__all__ = ["ChaosWriter", "PacketSink", "abort_connection", "wait_stall"]

logger = logging.getLogger("cyncsim.chaos")


class PacketSink(Protocol):
    """What ChaosWriter writes to: asyncio.StreamWriter and asyncio transports fit."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...


def abort_connection(sink: object) -> None:
    """Close a connection abruptly so the peer sees a reset (RST), not an orderly FIN.

    Takes an asyncio.StreamWriter or transport (SO_LINGER 0, then ``abort()``); any other
    object is closed with its ``close()`` if it has one.
    """
    transport = sink.transport if isinstance(sink, asyncio.StreamWriter) else sink
    if isinstance(transport, asyncio.BaseTransport):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()
        else:
            transport.close()
        return
    close = getattr(sink, "close", None)
    if callable(close):
        close()


async def wait_stall(policy: ChaosPolicy) -> float:
    """Sleep while ``policy`` says reading is stalled; call before each read.

    Returns the seconds slept (0.0 when no stall is on).
    """
    loop = asyncio.get_running_loop()
    slept = 0.0
    while (until := policy.stall_until(loop.time())) is not None:
        start = loop.time()
        await asyncio.sleep(max(0.0, until - start))
        slept += loop.time() - start
    return slept


_Entry = tuple[float, int, Emission | None]  # (due, order, emission); None marks a reset


class ChaosWriter:
    """Writes whole packets to ``sink`` as ``policy`` decides for ``direction``.

    ``write_packet(data)`` hands one whole packet to ``policy.on_packet`` with the loop's
    clock and schedules its emissions: each is written at its due time (loop.call_at), a
    sliced one as separate ``sink.write`` calls ``slice_gap_s`` apart with nothing else in
    between; writes due at the same time keep their order.  When ``policy.should_reset``
    says so after a packet, the connection is reset once that packet is out: pending writes
    are dropped and ``on_reset()`` runs (default: ``abort_connection(sink)``); a reset at a
    time (``ResetSpec.at_s``) is scheduled too unless ``time_reset=False``.

    Typical use in a device's connection handler (``t0`` = the loop time at device start)::

        policy = ChaosPolicy(config, seeds, name=f"device/{device_id}", t0=t0)
        out = ChaosWriter(stream_writer, policy)   # the device's own packets
        out.write_packet(packet.encode())          # instead of stream_writer.write(...)
        ...
        out.close()                                # before closing stream_writer

    Must be created inside a running loop.  ``await flush()`` waits until every scheduled
    write is done; ``close()`` (safe twice) cancels all timers and drops what is pending
    (counted in ``abandoned``); it does not close ``sink``.  Packets handed over after close
    are not written and are counted in ``discarded``.
    """

    def __init__(
        self,
        sink: PacketSink,
        policy: ChaosPolicy,
        direction: Direction | str = Direction.FROM_DEVICE,
        *,
        on_reset: Callable[[], None] | None = None,
        time_reset: bool = True,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.sink = sink
        self.policy = policy
        self.direction = Direction.parse(direction)
        self._on_reset = on_reset or functools.partial(abort_connection, sink)
        self._heap: list[_Entry] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._slicing: tuple[Emission, int] | None = None  # emission in progress, next piece
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = False
        self.was_reset = False
        self.abandoned = 0
        self.discarded = 0
        deadline = policy.reset_deadline() if time_reset else None
        self._reset_timer = None if deadline is None else self._loop.call_at(deadline, self._at)

    @property
    def pending(self) -> int:
        """Emissions scheduled but not completely written."""
        queued = sum(1 for _, _, em in self._heap if em is not None)
        return queued + (self._slicing is not None)

    def write_packet(self, data: bytes) -> list[Emission]:
        """Hand over one whole packet; returns the policy's emissions ([] = dropped)."""
        if self.closed:
            self.discarded += 1
            return []
        now = self._loop.time()
        emissions = self.policy.on_packet(self.direction, data, now)
        end = now
        for em in emissions:
            due = now + em.delay_s
            heapq.heappush(self._heap, (due, next(self._order), em))
            end = max(end, due + em.span_s)
        packet_no = self.policy.packets_seen(self.direction)
        if self.policy.should_reset(self.direction, packet_no, now):
            heapq.heappush(self._heap, (end, next(self._order), None))
        self._arm()
        return emissions

    async def flush(self) -> None:
        """Wait until every scheduled write is done (or the writer is closed)."""
        await self._idle.wait()

    def close(self) -> None:
        """Cancel every timer and drop pending writes; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        for handle in (self._timer, self._reset_timer):
            if handle is not None:
                handle.cancel()
        self._timer = self._reset_timer = None
        self.abandoned += self.pending
        if self.abandoned:
            logger.debug(
                "chaos writer %s closed with %d writes pending", self.policy.name, self.abandoned
            )
        self._heap.clear()
        self._slicing = None
        self._idle.set()

    def _arm(self) -> None:
        if self.closed or self._slicing is not None:
            return  # a sliced packet in progress re-arms when its last piece is out
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._heap:
            self._idle.clear()
            self._timer = self._loop.call_at(self._heap[0][0], self._pump)
        else:
            self._idle.set()

    def _pump(self) -> None:
        self._timer = None
        now = self._loop.time()
        while self._heap and self._heap[0][0] <= now:
            _, _, em = heapq.heappop(self._heap)
            if em is None:
                self._reset()
                return
            if not self._write(em.chunks[0]):
                return
            if len(em.chunks) > 1:
                self._slicing = (em, 1)
                self._timer = self._loop.call_later(em.slice_gap_s, self._next_piece)
                return
        self._arm()

    def _next_piece(self) -> None:
        assert self._slicing is not None
        em, i = self._slicing
        self._timer = None
        if not self._write(em.chunks[i]):
            return
        if i + 1 < len(em.chunks):
            self._slicing = (em, i + 1)
            self._timer = self._loop.call_later(em.slice_gap_s, self._next_piece)
        else:
            self._slicing = None
            self._pump()

    def _write(self, chunk: bytes) -> bool:
        if self.sink.is_closing():
            self.abandoned += 1  # the one being written; close() counts the rest
            self._slicing = None
            self.close()
            return False
        self.sink.write(chunk)
        return True

    def _at(self) -> None:
        self._reset_timer = None
        if self.policy.reset_due(self._loop.time()):
            self._reset()

    def _reset(self) -> None:
        self.was_reset = True
        self.close()
        self._on_reset()
