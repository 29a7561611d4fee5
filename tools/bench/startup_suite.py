# `cyncsim bench startup`: how long the command takes to start, as a user runs it.
#
# Strategy: `cyncsim --help` and `cyncsim inspect` on a small capture, in fresh processes,
# interleaved with `python -c pass` (the interpreter's own start).  Target: median < 0.3 s.
from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from subprocess import DEVNULL
from typing import Any

from cyncsim.replay.capture.pcapwrite import generate_benchmark_pcap
from cyncsim.tools.bench import common
from cyncsim.tools.bench.common import BenchOptions, Case, Check, Column, Log, SuiteResult

__all__ = ["SMALL_CAPTURE", "SPEC", "TARGET_S", "cyncsim_command", "run"]

TARGET_S = 0.3
SMALL_CAPTURE = "capture_20251106_081101.txt"
SPEC = common.SuiteSpec(
    "startup",
    full=5,  # runs of each command
    quick=5,
    columns=[
        Column("name", "command"),
        Column("argv", "runs"),
        Column("median_s", "median s", ".3f"),
        Column("min_s", "min s", ".3f"),
        Column("max_s", "max s", ".3f"),
        Column("vs_baseline", "vs python -c pass", ".2f"),
        Column("over_baseline_s", "over baseline s", ".3f"),
    ],
)


def cyncsim_command() -> list[str]:
    """The `cyncsim` console script next to this interpreter, else the CLI module."""
    script = Path(sys.executable).with_name("cyncsim")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cyncsim.tools.cli"]


def run(opts: BenchOptions, log: Log) -> SuiteResult:
    runs, cli = SPEC.size(opts), cyncsim_command()
    capture = opts.captures / SMALL_CAPTURE if opts.captures is not None else None
    if capture is None or not capture.is_file():
        capture = opts.workdir / "startup-small.pcap"
        generate_benchmark_pcap(capture, 200, 2, seed=0)
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "cyncsim --help": [*cli, "--help"],
        "cyncsim inspect": [*cli, "inspect", str(capture)],
    }
    cases: dict[str, Case] = {
        name: (
            functools.partial(subprocess.call, argv, stdout=DEVNULL, stderr=DEVNULL),
            common.expect("startup", f"{' '.join(argv)} (exit status)", 0),
        )
        for name, argv in commands.items()
    }
    for call, _ in cases.values():  # once untimed: the files are in the page cache
        call()
    log(f"startup: {', '.join(commands)}, {runs} runs each, interleaved")
    timings = common.measure_rounds(cases, runs, log)
    base = timings["python -c pass"].median
    rows: list[dict[str, Any]] = []
    for (name, argv), t in zip(commands.items(), timings.values(), strict=True):
        shown = " ".join(Path(a).name if i == 0 or "/" in a else a for i, a in enumerate(argv))
        row = {"name": name, "argv": shown, "median_s": t.median, "min_s": min(t.samples)}
        row |= {"max_s": max(t.samples), "samples_s": list(t.samples)}
        rows.append(row | {"vs_baseline": t.median / base, "over_baseline_s": t.median - base})
    checks = [
        Check(f"{r['name']} median", r["median_s"], TARGET_S, "<=", " s", ".3f") for r in rows[1:]
    ]
    title = f"whole commands in fresh processes, median of {runs} runs, against python -c pass"
    params = {"runs": runs, "command": cli, "capture": str(capture), "python": sys.executable}
    notes = [f"inspect reads {capture.name} ({capture.stat().st_size:,} bytes)"]
    return SPEC.result(opts, title, rows, checks, params, notes)
