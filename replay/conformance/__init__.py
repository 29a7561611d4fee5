# Conformance diff: does a candidate capture stay within what the reference devices do?
#
# Pure: compares already-read captures with a learned model and returns findings, timing
# rows and coverage as data (report.py); `cyncsim diff` (tools/diff_cmd.py) renders them.
from cyncsim.replay.conformance.diff import diff, diff_files
from cyncsim.replay.conformance.pairing import ALWAYS, Sample, pair_flow
from cyncsim.replay.conformance.reference import Reference, load_reference
from cyncsim.replay.conformance.report import (
    KINDS,
    ConformanceFinding,
    CoverageRow,
    DiffReport,
    Severity,
    TimingRow,
    Tolerance,
)
from cyncsim.replay.conformance.timing import compare, heartbeat_samples, ks_test, slack_distance

__all__ = [
    "ALWAYS",
    "KINDS",
    "ConformanceFinding",
    "CoverageRow",
    "DiffReport",
    "Reference",
    "Sample",
    "Severity",
    "TimingRow",
    "Tolerance",
    "compare",
    "diff",
    "diff_files",
    "heartbeat_samples",
    "ks_test",
    "load_reference",
    "pair_flow",
    "slack_distance",
]
