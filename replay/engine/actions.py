# What an engine asks its I/O layer to do: the actions it returns, as plain data.
#
# Strategy: NamedTuples (cheap to make by the thousand, compared and printed for free).  An
# engine never writes or closes anything itself; the caller carries each action out at its
# clock value ``at``: Send writes bytes, Close ends the connection, Relay hands a command to
# another mesh node (a fleet's business).
from __future__ import annotations

from typing import NamedTuple

from cyncsim.replay.payloads import Command

__all__ = ["Action", "Close", "Relay", "Send"]


class Send(NamedTuple):
    """Write ``data`` at clock value ``at``; ``key`` names it like a request key ("0x7b")."""

    at: float
    data: bytes
    key: str


class Close(NamedTuple):
    """Close the connection at clock value ``at``."""

    at: float
    reason: str


class Relay(NamedTuple):
    """A command this node does not (only) handle itself: for a fleet to pass to ``target``."""

    at: float
    target: int
    command: Command


Action = Send | Close | Relay
