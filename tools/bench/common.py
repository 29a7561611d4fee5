# Shared machinery of the `cyncsim bench` suites: timing, machine facts, table, JSON.
#
# Strategy: the machines are shared and noisy, so a suite measures everything it compares in
# one process and one run, takes the median over ``repeats`` runs of each measurement, and
# reports speeds next to ratios against a baseline measured in the same run.  Each timed run
# starts after a full garbage collection, and the previous run's result is dropped before the
# clock starts, so no run pays for freeing another's objects.  A suite returns a SuiteResult:
# rows (one dict per measurement, ``name`` first), the columns to print, and checks against
# targets; ``suite_json`` gives the documented JSON form:
#
#   {"suite": NAME, "machine": {...}, "date": ISO-8601, "quick": bool, "params": {...},
#    "rows": [{"name": ..., METRIC: value, ...}], "checks": [{"name", "value", "target",
#    "op", "unit", "passed"}], "passed": bool | null, "notes": [...],
#    "details": {TITLE: [row, ...]}}
from __future__ import annotations

import cProfile
import gc
import json
import math
import os
import platform
import pstats
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar

__all__ = [
    "BenchOptions",
    "Case",
    "Check",
    "Column",
    "Log",
    "SuiteResult",
    "Timing",
    "cell",
    "format_table",
    "machine_info",
    "measure",
    "measure_rounds",
    "profile_by_file",
    "render",
    "stderr_log",
    "suite_json",
    "write_json",
]

T = TypeVar("T")
Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What every suite gets: size, repeats, and a scratch directory it may write to."""

    workdir: Path
    quick: bool = False
    repeats: int = 3
    captures: Path | None = None  # folder of the shared MITM text captures, if any
    profile: bool = False  # suites that support it add a cProfile summary


@dataclass(frozen=True, slots=True)
class Timing:
    """Wall-clock seconds of each repeat of one measurement."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def rate(self, items: int) -> float:
        """Items per second at the median time."""
        return items / self.median if self.median > 0 else math.inf


def _time_once(fn: Callable[[], T], verify: Callable[[T], None] | None) -> float:
    gc.collect()
    start = perf_counter()
    result = fn()
    elapsed = perf_counter() - start
    if verify is not None:
        verify(result)
    del result  # freed here, before the next run's clock starts
    return elapsed


def measure(fn: Callable[[], T], repeats: int, verify: Callable[[T], None] | None = None) -> Timing:
    """Time ``fn()`` ``repeats`` times; ``verify`` checks each result, outside the clock."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    return Timing(tuple(_time_once(fn, verify) for _ in range(repeats)))


Case = tuple[Callable[[], Any], Callable[[Any], None] | None]  # (run, verify or None)


def measure_rounds(
    cases: Mapping[str, Case], repeats: int, log: Log | None = None
) -> dict[str, Timing]:
    """Time several things in interleaved rounds (a, b, c, a, b, c, ...).

    A burst of load from a neighbour then hits every measurement of a round alike instead of
    all repeats of one, so the ratios between them stay meaningful on a shared machine.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(repeats):
        for name, (fn, verify) in cases.items():
            if log is not None:
                log(f"  round {i + 1}/{repeats}: {name}")
            samples[name].append(_time_once(fn, verify))
    return {name: Timing(tuple(s)) for name, s in samples.items()}


@dataclass(frozen=True, slots=True)
class Check:
    """One target: ``value`` OP ``target``, OP being ``>=`` or ``<=``."""

    name: str
    value: float
    target: float
    op: str = ">="
    unit: str = ""
    spec: str = ",.6g"  # how to print value and target

    @property
    def passed(self) -> bool:
        if self.op == ">=":
            return self.value >= self.target
        if self.op == "<=":
            return self.value <= self.target
        raise ValueError(f"unknown comparison {self.op!r} in check {self.name!r}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "target": self.target,
            "op": self.op,
            "unit": self.unit,
            "passed": self.passed,
        }


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: row key, header, and a format spec for numbers (``,.0f``...)."""

    key: str
    header: str
    spec: str = ""


@dataclass(slots=True)
class SuiteResult:
    suite: str
    title: str  # one line saying what was measured
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    quick: bool = False
    # further tables (title, columns, rows), printed after the checks and kept in the JSON
    # under "details" by title (e.g. a profile summary)
    sections: list[tuple[str, list[Column], list[dict[str, Any]]]] = field(default_factory=list)

    @property
    def passed(self) -> bool | None:
        """All checks met; None when the suite has no targets."""
        return all(c.passed for c in self.checks) if self.checks else None


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPU, cores usable, Python, load at the start."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_mb"] = int(line.split()[1]) // 1024
                break
    return info


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def cell(value: Any, spec: str) -> str:
    """One table cell: ``-`` for a missing or non-finite value, PASS/FAIL for a bool, a
    number in ``spec``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return "PASS" if value else "FAIL"
    if isinstance(value, int | float) and spec:
        return format(value, spec)
    return str(value)


def format_table(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table; numbers right-aligned, a missing value shows as ``-``."""
    cells = [[cell(row.get(c.key), c.spec) for c in columns] for row in rows]
    widths = [max([len(c.header), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [any(isinstance(row.get(c.key), int | float) for row in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line([c.header for c in columns]), line(["-" * w for w in widths])]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def render(result: SuiteResult) -> str:
    """The human report of one suite: title, table, checks, notes."""
    parts = [f"== bench {result.suite}{' (quick)' if result.quick else ''}: {result.title}"]
    parts.append(format_table(result.columns, result.rows))
    if result.checks:
        check_rows = [
            {
                "check": f"{c.name} {c.op} {cell(c.target, c.spec)}{c.unit}",
                "measured": f"{cell(c.value, c.spec)}{c.unit}",
                "result": c.passed,
            }
            for c in result.checks
        ]
        cols = [Column("check", "target"), Column("measured", "measured"), Column("result", "")]
        parts.append(format_table(cols, check_rows))
    for title, columns, rows in result.sections:
        parts.append(f"{title}\n{format_table(columns, rows)}")
    parts.extend(f"note: {n}" for n in result.notes)
    return "\n\n".join(parts) + "\n"


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: those become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def suite_json(result: SuiteResult, machine: Mapping[str, Any]) -> dict[str, Any]:
    """The documented JSON object of one suite run (see the module comment)."""
    obj: dict[str, Any] = {
        "suite": result.suite,
        "machine": dict(machine),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": result.quick,
        "title": result.title,
        "params": result.params,
        "rows": result.rows,
        "checks": [c.as_dict() for c in result.checks],
        "passed": result.passed,
        "notes": result.notes,
        "details": {title: rows for title, _, rows in result.sections},
    }
    finite: dict[str, Any] = _finite(obj)
    return finite


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (no NaN), atomically enough for a report file."""
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def profile_by_file(fn: Callable[[], object], top: int = 12) -> dict[str, Any]:
    """Run ``fn`` once under cProfile: own time per source file and the top functions.

    cProfile slows Python code down several times, so only the shares mean something.
    """
    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    stats = pstats.Stats(prof)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    by_file: dict[str, float] = {}
    funcs: list[tuple[float, dict[str, Any]]] = []
    for (filename, lineno, name), (_, calls, tottime, cumtime, _) in raw.items():
        where = _short_path(filename)
        by_file[where] = by_file.get(where, 0.0) + tottime
        entry = {
            "function": f"{where}:{lineno}({name})",
            "calls": calls,
            "own_share": tottime / total,
            "cum_share": cumtime / total,
        }
        funcs.append((tottime, entry))
    funcs.sort(key=lambda f: -f[0])
    files = sorted(by_file.items(), key=lambda kv: -kv[1])
    return {
        "files": [{"file": f, "own_share": t / total} for f, t in files[:top] if t / total >= 1e-3],
        "functions": [entry for _, entry in funcs[:top]],
    }


def _short_path(filename: str) -> str:
    """``replay/capture/tcp.py`` for project files, the bare name for the rest."""
    if filename.startswith("<") or filename == "~":
        return "(builtins)"
    parts = Path(filename).parts
    for anchor in ("replay", "tools", "simulator"):
        if anchor in parts and "site-packages" not in parts:
            return "/".join(parts[parts.index(anchor) :])
    return Path(filename).name if filename else "(builtins)"


def stderr_log(message: str) -> None:
    """Progress lines for long suites, on stderr, only when it is a terminal."""
    if sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)
