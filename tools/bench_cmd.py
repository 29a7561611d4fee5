# `cyncsim bench SUITE [--json FILE] [--quick]`: run benchmark suites, print their tables.
#
# A thin front end over tools/bench (suites registered in common.SUITES).  --json writes each
# suite's result as {"suite", "machine", "date", "quick", "title", "params", "rows", "checks",
# "passed", "notes", "details": {TITLE: rows}} (`all`: {"machine", "suites": [...]}), the form
# tools/bench/report.py reads.  Missed targets are reported; with --check the exit status is 1.
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from cyncsim.captures import shared_captures_dir
from cyncsim.replay.errors import CyncError
from cyncsim.tools._output import check_writable
from cyncsim.tools.bench.common import SUITES, BenchOptions, SuiteResult, load_suite, render

__all__ = ["machine_info", "register", "run", "suite_json", "write_json"]


def _positive(text: str) -> int:
    if (value := int(text)) < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    listing = "; ".join(f"{name}: {desc}" for name, (_, desc) in SUITES.items())
    p = sub.add_parser(
        "bench",
        help=help_text,
        description=f"Run a benchmark suite, or all of them. Suites: {listing}.",
    )
    p.add_argument("suite", choices=[*SUITES, "all"], metavar="SUITE", help="suite name or all")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--quick", action="store_true", help="reduced sizes (under a minute)")
    p.add_argument("--repeats", type=_positive, default=3, metavar="N", help="runs of each (3)")
    where = "default: $CYNCSIM_CAPTURES or ../shared/captures"
    p.add_argument("--captures", type=Path, metavar="DIR", help=f"MITM captures folder ({where})")
    p.add_argument("--profile", action="store_true", help="add a cProfile summary where useful")
    p.add_argument("--check", action="store_true", help="exit status 1 when a target is missed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    names = list(SUITES) if args.suite == "all" else [args.suite]
    if args.json is not None:
        check_writable(args.json, f"--json {args.json}")  # before minutes of measuring
    machine = machine_info()
    objects: list[dict[str, Any]] = []
    missed = False
    with tempfile.TemporaryDirectory(prefix="cyncsim-bench-") as tmp:
        captures = args.captures if args.captures is not None else shared_captures_dir()
        opts = BenchOptions(Path(tmp), args.quick, args.repeats, captures, args.profile)
        for name in names:
            gc.collect()  # no garbage of an earlier suite for this one's collections to walk
            result = load_suite(name).run(opts, _stderr_log)
            out.write(render(result) + "\n")
            out.flush()
            objects.append(suite_json(result, machine))
            missed = missed or result.passed is False
    if args.json is not None:
        payload = objects[0] if args.suite != "all" else {"machine": machine, "suites": objects}
        try:
            write_json(args.json, payload)
        except OSError as exc:
            raise CyncError(f"--json {args.json}: {exc.strerror}", reason="io") from None
    return 1 if args.check and missed else 0


def _stderr_log(message: str) -> None:
    if sys.stderr.isatty():  # progress lines for a person watching
        print(message, file=sys.stderr, flush=True)


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: CPU, cores usable, Python, load at the start."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _proc_line("/proc/cpuinfo", "model name") or platform.processor() or "?",
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if mem := _proc_line("/proc/meminfo", "MemTotal"):
        info["memory_mb"] = int(mem.split()[0]) // 1024
    return info


def _proc_line(path: str, key: str) -> str | None:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    return next((ln.partition(":")[2].strip() for ln in lines if ln.startswith(key)), None)


def _finite(value: Any) -> Any:  # JSON has no NaN or infinity: those become null
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def suite_json(result: SuiteResult, machine: Mapping[str, Any]) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    obj: dict[str, Any] = {"suite": result.suite, "machine": dict(machine), "date": now}
    obj |= {k: getattr(result, k) for k in ("quick", "title", "params", "rows")}
    obj |= {"checks": [c.as_dict() for c in result.checks], "passed": result.passed}
    obj |= {"notes": result.notes, "details": {t: rows for t, _, rows in result.sections}}
    finite: dict[str, Any] = _finite(obj)
    return finite


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (no NaN), through a temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
