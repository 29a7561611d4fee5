# The controller side of a Cync device connection: ReliableTransport and what it reports.
#
# Strategy: asyncio I/O, timers and retries over the sans-IO core in cyncsim.replay.controller
# (exchange table, auto-answers, connection states).  Modules, none importing a sibling that
# imports it back: _result (Result, TransportStats), _link (one device connection),
# _receive (acting on the core's verdicts, the inbox), _manager (connect / serve / reconnect),
# _reliable (ReliableTransport).  Public API: the names below.
from __future__ import annotations

from cyncsim.replay.controller import ConnState
from cyncsim.simulator.transport._manager import ConnectionManager
from cyncsim.simulator.transport._reliable import ReliableTransport
from cyncsim.simulator.transport._result import Result, TransportStats

__all__ = ["ConnState", "ConnectionManager", "ReliableTransport", "Result", "TransportStats"]
