# The `cyncsim bench` suites, one module each, registered in SUITES below.
#
# A suite module declares its ``SPEC`` (a common.SuiteSpec) and ``run(opts, log)``; modules
# are imported only when their suite runs.  `cyncsim bench all` runs them in this order.
from __future__ import annotations

import importlib
from typing import Protocol, cast

from cyncsim.tools.bench.common import BenchOptions, Log, SuiteResult

__all__ = ["SUITES", "Suite", "load_suite"]


class Suite(Protocol):
    """What a suite module provides."""

    def run(self, opts: BenchOptions, log: Log) -> SuiteResult: ...


# name -> (module, one-line description)
SUITES: dict[str, tuple[str, str]] = {
    "import": (
        "cyncsim.tools.bench.import_suite",
        "capture reader throughput against dpkt, a struct floor and scapy",
    ),
    "baseline": (
        "cyncsim.tools.bench.baseline_suite",
        "toggles through ReliableTransport to a simulated device: learned latency and none",
    ),
    "acks": (
        "cyncsim.tools.bench.acks_suite",
        "answer timing per exchange against the learned distributions; timer fidelity",
    ),
    "chaos": (
        "cyncsim.tools.bench.chaos_suite",
        "the spec's chaos matrix: latency, success and retransmits per fault row",
    ),
    "group": (
        "cyncsim.tools.bench.group_suite",
        "one command to 10 devices at once (asyncio.gather): rounds, retries, lock time",
    ),
    "overhead": (
        "cyncsim.tools.bench.overhead_suite",
        "a simulated round trip against blocking and BufferedProtocol echo servers",
    ),
    "fleet": (
        "cyncsim.tools.bench.fleet_suite",
        "memory, CPU and heartbeat timing of 1,000-10,000 dial-mode devices; workers",
    ),
    "startup": (
        "cyncsim.tools.bench.startup_suite",
        "cyncsim --help and cyncsim inspect in fresh processes, against python -c pass",
    ),
    "fuzz": (
        "cyncsim.tools.bench.fuzz_suite",
        "random and mutated packets to the decoders, framer and device engine: untyped errors",
    ),
}


def load_suite(name: str) -> Suite:
    """The module of suite ``name`` (KeyError for an unregistered name)."""
    module_name, _ = SUITES[name]
    return cast(Suite, importlib.import_module(module_name))
