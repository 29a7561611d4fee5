# What ReliableTransport reports: one ``Result`` per exchange and the ``TransportStats`` counters.
#
# Strategy: failures of an exchange are values (``Result.reason``), never exceptions, so a
# caller under load sees "timeout" or "backpressure" as data; the counters are one flat
# dataclass that reports and benchmarks read through ``as_dict``.
from __future__ import annotations

from dataclasses import asdict, dataclass

from cyncsim.replay.protocol import CyncPacket

__all__ = ["Result", "TransportStats"]


@dataclass(frozen=True, slots=True)
class Result:
    """Outcome of one exchange; failures are values, never exceptions."""

    success: bool
    reason: str  # "acked", "timeout", "not_connected", "reconnecting", "closed", ...
    retry_count: int = 0
    latency_s: float = 0.0  # to the end of the exchange: the ack, or the f9 result waited for
    ack: CyncPacket | None = None
    result: CyncPacket | None = None
    ack_latency_s: float | None = None  # to the ack, when one came


@dataclass(slots=True)
class TransportStats:
    """Counters of what the transport did; ``as_dict`` for reports and benchmarks."""

    commands: int = 0  # send_reliable exchanges started
    transmissions: int = 0  # 0x73 writes, retransmissions included
    retransmissions: int = 0
    acked: int = 0
    timeouts: int = 0
    results: int = 0  # f9 results matched to a waiting command
    duplicate_acks: int = 0  # 0x7B for an exchange that was already acked
    unmatched_acks: int = 0  # 0x7B for no pending exchange (late, stale or foreign)
    backpressure: int = 0
    reports: int = 0  # distinct 0x83 delivered
    duplicate_reports: int = 0  # 0x83 re-acked but not delivered again
    status_packets: int = 0  # 0x43
    pings_answered: int = 0  # 0xD3 -> 0xD8
    time_replies: int = 0  # 0xC3 -> 0xC8
    rehellos: int = 0  # 0x23 after the first one on a connection
    decode_errors: int = 0
    recv_dropped: int = 0  # oldest inbox items dropped because nobody read them

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
