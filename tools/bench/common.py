# The scaffold of every `cyncsim bench` suite: registry, description, timing, checks, tables.
#
# Strategy: a suite module declares a ``SuiteSpec`` (sizes, columns) and ``run(opts, log)``,
# times what it compares in interleaved rounds (medians reported) and returns a SuiteResult.
from __future__ import annotations

import cProfile
import gc
import importlib
import math
import pstats
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Generic, TypeVar

from cyncsim.replay.errors import CyncError

__all__ = [
    "CHECK_COLUMNS", "PROFILE_COLUMNS", "SUITES", "BenchOptions", "Case", "Check", "Column",
    "Log", "Rows", "SuiteResult", "SuiteSpec", "Timing", "check_rows", "expect", "fail",
    "format_table", "load_suite", "measure", "measure_rounds", "profile_by_file", "render",
]  # fmt: skip

T = TypeVar("T")
S = TypeVar("S")
Log = Callable[[str], None]
Rows = list[dict[str, Any]]

# suite NAME (module cyncsim.tools.bench.NAME_suite, imported when it runs): description
_DESCRIPTIONS = {
    "import": "capture reader throughput against dpkt, a struct floor and scapy",
    "baseline": "toggles through ReliableTransport to a simulated device: learned latency, none",
    "acks": "answer timing per exchange against the learned distributions; timer fidelity",
    "chaos": "the spec's chaos matrix: latency, success and retransmits per fault row",
    "group": "one command to 10 devices at once (asyncio.gather): rounds, retries, lock time",
    "overhead": "a simulated round trip against blocking and BufferedProtocol echo servers",
    "fleet": "memory, CPU and heartbeat timing of 1,000-10,000 dial-mode devices; workers",
    "startup": "cyncsim --help and cyncsim inspect in fresh processes, against python -c pass",
    "fuzz": "random and mutated packets to the decoders, framer and device engine: untyped errors",
}
SUITES = {n: (f"cyncsim.tools.bench.{n}_suite", d) for n, d in _DESCRIPTIONS.items()}


def load_suite(name: str) -> Any:
    """The module of suite ``name``: its ``SPEC`` and ``run(opts, log) -> SuiteResult``."""
    return importlib.import_module(SUITES[name][0])


def fail(suite: str, message: str) -> CyncError:
    """The error a suite raises when what it measured is wrong."""
    return CyncError(f"bench {suite}: {message}", reason="bench")


def expect(suite: str, what: str, want: object) -> Callable[[object], None]:
    """A ``measure`` verify: ``what`` must give ``want``."""

    def verify(got: object) -> None:
        if got != want:
            raise fail(suite, f"{what} gave {got}, expected {want}")

    return verify


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
        return items / self.median if self.median > 0 else math.inf


Case = tuple[Callable[[], Any], Callable[[Any], None] | None]  # (run, verify or None)


def measure(fn: Callable[[], T], repeats: int, verify: Callable[[T], None] | None = None) -> Timing:
    """Time ``fn()`` ``repeats`` times; ``verify`` checks each result, outside the clock."""
    return measure_rounds({"": (fn, verify)}, repeats)[""]


def measure_rounds(
    cases: Mapping[str, Case], repeats: int, log: Log | None = None
) -> dict[str, Timing]:
    """Time several things in interleaved rounds (a, b, a, b, ...): load hits them alike."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(repeats):
        for name, (fn, verify) in cases.items():
            if log is not None and name:
                log(f"  round {i + 1}/{repeats}: {name}")
            gc.collect()
            start = perf_counter()
            result = fn()
            samples[name].append(perf_counter() - start)
            if verify is not None:
                verify(result)
            del result  # freed here, before the next run's clock starts
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
        if self.op not in (">=", "<="):
            raise ValueError(f"unknown comparison {self.op!r} in check {self.name!r}")
        return self.value >= self.target if self.op == ">=" else self.value <= self.target

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("name", "value", "target", "op", "unit", "passed")}


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: row key, header, and a format spec for numbers (``,.0f``...)."""

    key: str
    header: str
    spec: str = ""

    @staticmethod
    def latency(
        prefix: str = "", label: str = "", unit: str = "ms", spec: str = ".1f", keys: str = ""
    ) -> list[Column]:
        """The standard latency columns p50/p90/p99/max (or ``keys``) of ``stats.summary``."""
        names = keys.split() or ["p50", "p90", "p99", "max"]
        return [Column(f"{prefix}{k}_{unit}", f"{label}{k} {unit}", spec) for k in names]


PROFILE_COLUMNS = {
    "files": [Column("file", "file"), Column("own_share", "share", ".1%")],
    "functions": [
        Column("function", "function"),
        Column("calls", "calls", ",d"),
        Column("own_share", "own", ".1%"),
        Column("cum_share", "cumulative", ".1%"),
    ],
}
Section = tuple[str, list[Column], Rows]  # an extra table (title, cols, rows): JSON "details"


@dataclass(slots=True)
class SuiteResult:
    suite: str
    title: str  # one line saying what was measured
    columns: list[Column]
    rows: Rows = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    quick: bool = False
    sections: list[Section] = field(default_factory=list)

    @property
    def passed(self) -> bool | None:
        """All checks met; None when the suite has no targets."""
        return all(c.passed for c in self.checks) if self.checks else None

    def add_profile(self, summary: Mapping[str, Any], what: str) -> None:
        """The two extra tables of a ``profile_by_file`` summary: by file, top functions."""
        titles = {"files": " (cProfile; shares of own time by file)"}
        for key in ("files", "functions"):
            title = f"profile: {what}{titles.get(key, ', top functions by own time')}"
            self.sections.append((title, PROFILE_COLUMNS[key], list(summary.get(key, []))))


@dataclass(frozen=True, slots=True)
class SuiteSpec(Generic[S]):
    """A suite: name, sizes (full, --quick), table columns, extra tables' columns by title."""

    name: str
    full: S
    quick: S
    columns: list[Column]
    details: dict[str, list[Column]] = field(default_factory=dict)

    def size(self, opts: BenchOptions) -> S:
        return self.quick if opts.quick else self.full

    def result(
        self,
        opts: BenchOptions,
        title: str,
        rows: Rows,
        checks: list[Check],
        params: dict[str, Any],
        notes: Sequence[str] = (),
        details: Mapping[str, Rows] | None = None,
    ) -> SuiteResult:
        """The suite's result; ``details`` are the rows of its extra tables, by title."""
        sections = [(t, self.details[t], r) for t, r in (details or {}).items()]
        args = (list(self.columns), rows, checks, params, [*notes], opts.quick, sections)
        return SuiteResult(self.name, title, *args)


def _cell(value: Any, spec: str) -> str:
    """``-`` if missing or non-finite, PASS/FAIL for a bool, numbers in ``spec``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return "PASS" if value else "FAIL"
    return format(value, spec) if isinstance(value, int | float) and spec else str(value)


def format_table(
    columns: Sequence[Column], rows: Sequence[Mapping[str, Any]], markdown: bool = False
) -> str:
    """A plain-text or GitHub table: numbers right-aligned, a missing value shown as ``-``."""
    cells = [[_cell(row.get(c.key), c.spec) for c in columns] for row in rows]
    numeric = [
        any(isinstance(v := r.get(c.key), int | float) and not isinstance(v, bool) for r in rows)
        for c in columns
    ]
    if markdown:
        lines = [[c.header for c in columns], ["---:" if n else "---" for n in numeric]]
        lines += [[v.replace("|", "\\|") for v in r] for r in cells]
        return "\n".join(f"| {' | '.join(line)} |" for line in lines)
    widths = [max([len(c.header), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    aligned = [
        [v.rjust(w) if n else v.ljust(w) for v, w, n in zip(ln, widths, numeric, strict=True)]
        for ln in [[c.header for c in columns], ["-" * w for w in widths], *cells]
    ]
    return "\n".join("  ".join(ln).rstrip() for ln in aligned)


CHECK_COLUMNS = [Column(k, k) for k in ("target", "measured", "result")]


def check_rows(checks: Iterable[Mapping[str, Any]], num: Callable[[Any, str], str] = _cell) -> Rows:
    """The rows of a checks table; ``num(value, spec)`` prints the numbers."""
    return [
        {
            "target": f"{c['name']} {c['op']} {num(c['target'], c.get('spec', ''))}{c['unit']}",
            "measured": f"{num(c['value'], c.get('spec', ''))}{c['unit']}",
            "result": c["passed"],
        }
        for c in checks
    ]


def render(result: SuiteResult) -> str:
    """The human report of one suite: title, table, checks, extra tables, notes."""
    parts = [f"== bench {result.suite}{' (quick)' if result.quick else ''}: {result.title}"]
    parts.append(format_table(result.columns, result.rows))
    if result.checks:
        checks = [c.as_dict() | {"spec": c.spec} for c in result.checks]
        parts.append(format_table(CHECK_COLUMNS, check_rows(checks)))
    parts += [f"{title}\n{format_table(cols, rows)}" for title, cols, rows in result.sections]
    parts += [f"note: {n}" for n in result.notes]
    return "\n\n".join(parts) + "\n"


def profile_by_file(fn: Callable[[], object], top: int = 12) -> dict[str, Any]:
    """Run ``fn`` once under cProfile: own-time shares per file and top functions."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    raw = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    by_file: dict[str, float] = {}
    funcs: Rows = []
    for (filename, lineno, name), (_, calls, own, cum, _) in raw.items():
        where = _short_path(filename)
        by_file[where] = by_file.get(where, 0.0) + own / total
        entry = {"function": f"{where}:{lineno}({name})", "calls": calls}
        funcs.append(entry | {"own_share": own / total, "cum_share": cum / total})
    files = sorted(by_file.items(), key=lambda kv: -kv[1])[:top]
    return {
        "files": [{"file": f, "own_share": share} for f, share in files if share >= 1e-3],
        "functions": sorted(funcs, key=lambda f: -f["own_share"])[:top],
    }


def _short_path(filename: str) -> str:
    """``replay/capture/tcp.py`` for project files, the bare name for the rest."""
    if filename.startswith("<") or filename in ("~", ""):
        return "(builtins)"
    parts = Path(filename).parts
    for anchor in ("replay", "tools", "simulator"):
        if anchor in parts and "site-packages" not in parts:
            return "/".join(parts[parts.index(anchor) :])
    return Path(filename).name
