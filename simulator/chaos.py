# Chaos for the simulator: the configuration, and ChaosWriter, which applies a policy's
# decisions to a real stream with asyncio.
#
# Strategy: everything that decides is pure and lives in simulator/_chaos_policy.py
# (ChaosPolicy, SeedTree, the field validator); this module declares the config (each field's
# range once, as field metadata) and moves bytes in time: ChaosWriter keeps one heap of
# pending writes ordered by (due time, arrival order) and one loop timer for the earliest,
# writes the pieces of a sliced packet back to back without letting another packet in
# between, and close() cancels its timers, so it never leaves a task behind.
#
# Public API: ChaosConfig (+ PacketFaults, BurstLoss, SlicingSpec, StallSpec, ResetSpec,
# PartitionSpec), ChaosPolicy, SeedTree, Direction, Emission, FaultEvent, ChaosWriter,
# abort_connection, wait_stall.
from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import json
import logging
import socket
import struct
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, Self

from cyncsim.replay.errors import ChaosConfigError
from cyncsim.simulator._chaos_fields import (
    DIRECTION_META,
    ConfigSpec,
    Direction,
    build_spec,
    flag_field,
    int_field,
    pattern_field,
    rate_field,
    real_field,
    spec_meta,
)
from cyncsim.simulator._chaos_policy import ChaosPolicy, Emission, FaultEvent, SeedTree

__all__ = [
    "BurstLoss",
    "ChaosConfig",
    "ChaosPolicy",
    "ChaosWriter",
    "Direction",
    "Emission",
    "FaultEvent",
    "PacketFaults",
    "PacketSink",
    "PartitionSpec",
    "ResetSpec",
    "SeedTree",
    "SlicingSpec",
    "StallSpec",
    "abort_connection",
    "wait_stall",
]

logger = logging.getLogger("cyncsim.chaos")


@dataclass(frozen=True)
class BurstLoss(ConfigSpec):
    """Gilbert-Elliott burst loss: a two-state (good/bad) Markov chain stepped once per packet.

    ``p`` = P(good -> bad), ``r`` = P(bad -> good); a packet is lost with probability
    ``loss_good`` in the good state and ``loss_bad`` in the bad one.  The chain starts good;
    a bad spell lasts 1/r packets on average.  The default (p=0) never loses anything.
    """

    p: float = rate_field(0.0)
    r: float = rate_field(1.0)
    loss_good: float = rate_field(0.0)
    loss_bad: float = rate_field(1.0)


@dataclass(frozen=True)
class SlicingSpec(ConfigSpec):
    """Split a packet over several writes: with probability ``rate`` a packet of n >= 2 bytes
    is cut into k pieces, k uniform in 2..min(max_pieces, n), each piece non-empty, written
    ``delay_ms`` apart."""

    rate: float = rate_field(0.0)
    max_pieces: int = int_field(3, lo=2)
    delay_ms: float = real_field(0.0)


@dataclass(frozen=True)
class StallSpec(ConfigSpec):
    """Stop reading for ``duration_s`` seconds, starting ``at_s`` seconds after the policy's
    t0 and/or when to_device packet number ``after_packet`` is handed over (each trigger once).
    """

    duration_s: float = real_field(lo_open=True)
    at_s: float | None = real_field(None, optional=True)
    after_packet: int | None = int_field(None, optional=True)

    def _check_together(self) -> None:
        if self.at_s is None and self.after_packet is None:
            raise ChaosConfigError(
                "at_s=None and after_packet=None: a stall needs a trigger, "
                "set at_s and/or after_packet"
            )


@dataclass(frozen=True)
class ResetSpec(ConfigSpec):
    """Close the connection abruptly: after packet number ``after_packet`` (counted in the
    packet's own direction), once at ``at_s`` seconds after t0, and/or after any packet with
    ``probability``.  ``direction`` restricts the packet triggers to one direction."""

    after_packet: int | None = int_field(None, optional=True)
    at_s: float | None = real_field(None, optional=True)
    probability: float = rate_field(0.0)
    direction: Direction | None = field(default=None, metadata=DIRECTION_META)

    def _check_together(self) -> None:
        if self.after_packet is None and self.at_s is None and self.probability == 0.0:
            raise ChaosConfigError(
                "after_packet=None, at_s=None, probability=0: a reset needs a trigger, "
                "set after_packet, at_s and/or probability > 0"
            )


@dataclass(frozen=True)
class PartitionSpec(ConfigSpec):
    """A network partition from ``start_s`` to ``end_s`` seconds after t0 (end None: until
    ``ChaosPolicy.partition_end``).  start_s None: no scheduled window, only the manual API
    (whose partitions use the same two modes).  ``refuse_connections``: new connections are
    refused; ``blackhole``: packets in both directions vanish."""

    start_s: float | None = real_field(None, optional=True)
    end_s: float | None = real_field(None, optional=True)
    refuse_connections: bool = flag_field(True)
    blackhole: bool = flag_field(True)

    def _check_together(self) -> None:
        if self.end_s is not None and (self.start_s is None or self.end_s <= self.start_s):
            raise ChaosConfigError(
                f"end_s={self.end_s!r} needs a start_s < end_s (start_s={self.start_s!r})"
            )
        if not (self.refuse_connections or self.blackhole):
            raise ChaosConfigError(
                "refuse_connections=False and blackhole=False: the partition would do "
                "nothing, set one of them to true"
            )


@dataclass(frozen=True)
class PacketFaults(ConfigSpec):
    """The per-packet faults of one direction (see ChaosConfig for the meaning of each)."""

    latency_ms: float = real_field(0.0)
    latency_variance: float = real_field(0.0)
    packet_loss_rate: float = rate_field()
    drop_pattern: tuple[int, ...] = pattern_field()
    duplicate_rate: float = rate_field()
    reorder_rate: float = rate_field()
    reorder_delay_ms: float = real_field(50.0)
    corruption_rate: float = rate_field()
    corruption_bytes: int = int_field(1)
    burst: BurstLoss = field(default_factory=BurstLoss, metadata=spec_meta(BurstLoss))
    slicing: SlicingSpec = field(default_factory=SlicingSpec, metadata=spec_meta(SlicingSpec))

    def _check_together(self) -> None:
        if self.reorder_rate > 0 and self.reorder_delay_ms == 0:
            raise ChaosConfigError(
                f"reorder_rate={self.reorder_rate!r} needs reorder_delay_ms > 0 "
                "(a packet held back by 0 ms is never overtaken)"
            )

    def packet_faults(self) -> PacketFaults:
        """These settings as a plain PacketFaults (drops ChaosConfig's extra fields)."""
        return PacketFaults(**{f.name: getattr(self, f.name) for f in fields(PacketFaults)})


_PACKET_KEYS = tuple(f.name for f in fields(PacketFaults))


@dataclass(frozen=True)
class ChaosConfig(PacketFaults):
    """Everything the chaos layer can do to one device's traffic.  All rates are in 0..1.

    Directions are seen from the device: ``to_device`` = packets it receives, ``from_device``
    = packets it sends.  The per-packet fields below are the defaults for both directions;
    ``to_device`` / ``from_device`` hold a complete PacketFaults that replaces them for that
    direction.  In a file, keys missing from a ``[to_device]`` table are filled from the top
    level (a nested table such as ``[to_device.burst]`` replaces the top-level one whole)::

        latency_ms = 20
        packet_loss_rate = 0.01
        [from_device]          # the device's own packets: also duplicated
        duplicate_rate = 0.05
        [reset]
        after_packet = 12
        direction = "from_device"

    Per packet:

    - latency_ms: delay added to every packet.  latency_variance: jitter, the standard
      deviation in ms of a Gaussian added to latency_ms (the total is clipped at 0).  Jitter
      never reorders packets: each packet leaves no earlier than the one before it.
    - packet_loss_rate: independent loss.  drop_pattern: 1-based packet numbers to drop,
      counted per direction over the policy's life; when non-empty it alone decides loss
      (packet_loss_rate and burst are then ignored).  burst: Gilbert-Elliott loss, added to
      packet_loss_rate (a packet is lost if either says so).
    - duplicate_rate: the packet is sent twice in a row (same bytes, same pieces).
    - reorder_rate / reorder_delay_ms: the packet is held back by reorder_delay_ms more, so
      later packets overtake it.
    - corruption_rate / corruption_bytes: that many distinct bytes (all of them if the packet
      is shorter) are XORed with a non-zero mask, so each one really changes.
    - slicing: the packet is written in several pieces.

    Per connection: ``stall`` (stop reading), ``reset`` (abrupt close), ``partition``
    (refuse connections / black-hole traffic).  Times ``*_s`` are seconds after the
    policy's ``t0``.  Bad values raise ChaosConfigError naming field, value and range.
    """

    to_device: PacketFaults | None = field(
        default=None, metadata=spec_meta(PacketFaults, optional=True)
    )
    from_device: PacketFaults | None = field(
        default=None, metadata=spec_meta(PacketFaults, optional=True)
    )
    stall: StallSpec | None = field(default=None, metadata=spec_meta(StallSpec, optional=True))
    reset: ResetSpec | None = field(default=None, metadata=spec_meta(ResetSpec, optional=True))
    partition: PartitionSpec | None = field(
        default=None, metadata=spec_meta(PartitionSpec, optional=True)
    )

    def faults(self, direction: Direction | str) -> PacketFaults:
        """The per-packet settings in force for ``direction``."""
        d = Direction.parse(direction)
        override = self.to_device if d is Direction.TO_DEVICE else self.from_device
        return override if override is not None else self.packet_faults()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> Self:
        """Like ConfigSpec.from_dict, but ``to_device``/``from_device`` tables inherit the keys
        they do not set from the top level."""
        if isinstance(data, Mapping):
            merged = dict(data)
            base = {k: data[k] for k in _PACKET_KEYS if k in data}
            for key in ("to_device", "from_device"):
                if isinstance(data.get(key), Mapping):
                    merged[key] = {**base, **data[key]}
            data = merged
        return build_spec(cls, data, source)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a TOML or JSON file (by suffix .toml/.json, else by content)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ChaosConfigError(f"{p}: cannot read chaos config: {e}") from None
        suffix = p.suffix.lower()
        as_json = suffix == ".json" or (suffix != ".toml" and text.lstrip().startswith("{"))
        try:
            data = json.loads(text) if as_json else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            kind = "JSON" if as_json else "TOML"
            raise ChaosConfigError(f"{p}: not valid {kind}: {e}") from None
        return cls.from_dict(data, source=str(p))


# --- asyncio side ---------------------------------------------------------------------------


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
