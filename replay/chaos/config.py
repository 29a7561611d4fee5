# Chaos config: what the chaos layer may do to one device's traffic, as frozen dataclasses.
#
# Strategy: each field declares its rule once, as field metadata (replay/chaos/_fields.py);
# ConfigSpec validates on construction and builds from plain data, so a config made in code,
# from a dict or from a TOML/JSON file passes the same checks and fails with the same
# ChaosConfigError naming the field, the value and the allowed range.  Pure: reading a file in
# ChaosConfig.load is the only I/O.
from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Self

from cyncsim.replay.chaos._fields import (
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
from cyncsim.replay.errors import ChaosConfigError

__all__ = [
    "BurstLoss",
    "ChaosConfig",
    "PacketFaults",
    "PartitionSpec",
    "ResetSpec",
    "SlicingSpec",
    "StallSpec",
]


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
