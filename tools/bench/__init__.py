# The `cyncsim bench` suites, one module each, registered in SUITES below.
#
# A suite module provides ``run(opts: BenchOptions, log: Log) -> SuiteResult`` (see
# tools/bench/common.py); to add one, write tools/bench/<name>_suite.py and add a line to
# SUITES.  `cyncsim bench all` runs them in the order of this table.  Modules are imported only
# when their suite runs, so one suite's heavy imports never slow down another.
from __future__ import annotations

import importlib
from typing import Protocol, cast

from tools.bench.common import BenchOptions, Log, SuiteResult

__all__ = ["SUITES", "Suite", "load_suite"]


class Suite(Protocol):
    """What a suite module provides."""

    def run(self, opts: BenchOptions, log: Log) -> SuiteResult: ...


# name -> (module, one-line description)
SUITES: dict[str, tuple[str, str]] = {
    "import": (
        "tools.bench.import_suite",
        "capture reader throughput against dpkt, a struct floor and scapy",
    ),
}


def load_suite(name: str) -> Suite:
    """The module of suite ``name`` (KeyError for an unregistered name)."""
    module_name, _ = SUITES[name]
    return cast(Suite, importlib.import_module(module_name))
