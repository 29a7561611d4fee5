# `cyncsim validate CAPTURE... [--holdout FILE... | --split 0.67] [--runs N] [--seed S]
#  [--json] [--html REPORT.html]`
#
# Thin front end over simulator.validate.validate: learn from a training part, replay the
# held-out part N times against simulators of the learned model (both directions), and print
# one table: per request kind the real held-out p50/p95/max, the runs' 5-95% envelope of each
# (marked * when outside, information only), the KS rank p-value and the verdict (from p
# alone), with the structural findings of the replays.  Exit
# status 0 when every kind with enough data is plausible, 1 when one is not, 2 on usage or
# input errors (a CyncError is one line on stderr in tools/cli.py).
from __future__ import annotations

import argparse
import asyncio
import json
import math
from pathlib import Path
from typing import TextIO

from cyncsim.replay.conformance.predictive import (
    ALPHA,
    MIN_RUNS_TO_REJECT,
    MIN_SAMPLES,
    Envelope,
)
from cyncsim.replay.conformance.validation import ValidationReport
from cyncsim.replay.errors import CyncError
from cyncsim.tools._extras import require
from cyncsim.tools._output import check_writable

__all__ = ["print_validation", "register", "run"]

_DESCRIPTION = (
    "Check the simulator's predictions on real traffic it was not trained on.  Learn a model "
    "from the training part: the CAPTURE files when --holdout names the held-out files, else "
    "the first --split of each capture's own time span (default 0.67), the rest being held "
    "out.  The cut moves on to the first instant when no request of that capture waits for "
    "its answer (a burst in flight is not cut in two), and an answer sent after the cut to a "
    "request before it stays in training, so the held-out part holds whole exchanges; a "
    "connection that straddles the cut is held out from the cut on.  Then the held-out "
    "part's controller side is replayed against a simulated device, and its devices side "
    "against the simulated cloud, --runs times each with seeds derived from --seed, on "
    "loopback at the captured times (idle gaps over --max-gap shortened), each replay in a "
    "worker process of its own (its own event loop).  Per request kind the real latency "
    "sample is checked against the runs: the KS distance from the real sample to the pooled "
    "runs is ranked among each run's distance to as many values as the model learned the "
    "kind from (n train), drawn from the other runs pooled (so both carry the training "
    "sample's error), p = (1 + #{run distances >= real}) / (runs + 1).  A kind is "
    f"insufficient with fewer than {MIN_SAMPLES} real samples (or too few simulated); "
    f"plausible when p >= {ALPHA:g}; else implausible.  With N runs p cannot fall below "
    f"1/(N+1), so with fewer than {MIN_RUNS_TO_REJECT} runs no kind can be implausible (the "
    "output says so).  "
    "The real p50, p95 and max are also placed in the runs' 5th-95th percentile envelope "
    "(with fewer than 20 runs: their min to max), marked * when outside: information, not "
    "part of the verdict.  Exit status 0 when every kind with enough data is plausible, 1 "
    "when not, 2 on usage or input errors."
)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction between 0 and 1")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    from cyncsim.simulator.validate import DEFAULT_MAX_GAP, DEFAULT_RUNS, DEFAULT_SPLIT

    p = sub.add_parser("validate", help=help_text, description=_DESCRIPTION)
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help="capture to learn from")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--holdout", nargs="+", metavar="FILE", help="held-out captures")
    how.add_argument(
        "--split",
        type=_fraction,
        default=DEFAULT_SPLIT,
        metavar="F",
        help=f"train on the first F of each capture's time (default {DEFAULT_SPLIT})",
    )
    p.add_argument(
        "--runs", type=int, default=DEFAULT_RUNS, metavar="N",
        help=f"simulated replays per direction (default {DEFAULT_RUNS})",
    )  # fmt: skip
    p.add_argument("--seed", type=int, help="root seed of the runs (default: drawn, printed)")
    p.add_argument(
        "--max-gap", type=float, default=DEFAULT_MAX_GAP, metavar="SECONDS",
        help=f"shorten idle gaps to this long (default {DEFAULT_MAX_GAP:g}; inf keeps them)",
    )  # fmt: skip
    p.add_argument(
        "--jobs", type=int, metavar="J",
        help="replays running at once, one worker process each (default: all runs; they "
        "mostly wait on the captured schedule)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--html", metavar="REPORT.html", help="write a self-contained HTML report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from cyncsim.simulator.validate import validate

    if args.runs < 2:
        raise CyncError(f"--runs {args.runs}: need at least 2", reason="usage")
    if not args.max_gap > 0:
        raise CyncError(f"--max-gap {args.max_gap}: need seconds > 0", reason="usage")
    if args.jobs is not None and args.jobs < 1:
        raise CyncError(f"--jobs {args.jobs}: need at least 1", reason="usage")
    if args.html:
        check_writable(args.html, f"--html {args.html}")
        require("matplotlib", "validate --html (its plots)")
    report = asyncio.run(
        validate(
            args.captures,
            holdout=args.holdout or (),
            split=args.split,
            runs=args.runs,
            seed=args.seed,
            max_gap=None if math.isinf(args.max_gap) else args.max_gap,
            jobs=args.jobs,
        )
    )
    if args.html:
        from cyncsim.tools._validate_report import write_html

        write_html(report, args.html)
    if args.json:
        out.write(json.dumps(report.as_dict()) + "\n")
    else:
        print_validation(report, out)
        if args.html:
            out.write(f"HTML report written to {args.html}\n")
    return 0 if report.plausible else 1


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def _env(e: Envelope) -> str:
    mark = "" if e.inside is not False else "*"
    if e.low is None:
        return f"{_ms(e.real)} [no runs]"
    return f"{_ms(e.real)}{mark} [{_ms(e.low)}-{_ms(e.high)}]"


def print_validation(report: ValidationReport, out: TextIO) -> None:
    """The text table: one line per request kind."""
    if report.split is not None:
        what = f"time split at {report.split:g} of each capture"
        out.write(f"captures: {', '.join(Path(s).name for s in report.training)} ({what})\n")
    else:
        out.write(f"training: {', '.join(Path(s).name for s in report.training)}\n")
        out.write(f"held out: {', '.join(Path(s).name for s in report.held_out)}\n")
    gap = "none" if report.max_gap is None else f"{report.max_gap:g} s"
    out.write(f"runs: {report.runs} per direction, seed {report.seed}, idle gaps cut to {gap}\n")
    for note in report.notes:
        out.write(f"note: {note}\n")
    if report.loop_lateness:
        lat = report.loop_lateness
        out.write(f"event-loop lateness in the replays: p50 {lat['p50_median']:.2f} ms (median "
                  f"run), p99 {lat['p99_worst']:.2f} ms (worst run)\n")  # fmt: skip
    out.write(
        "\nlatency ms: real value [runs' 5-95% envelope], * = outside (not judged); "
        f"p = KS rank p-value, plausible when p >= {ALPHA:g}\n"
    )
    head = (
        f"{'kind':<30}{'by':<7}{'n real':>7}{'n train':>8}  "
        f"{'p50':<24}{'p95':<24}{'max':<24}"
        f"{'p':>6}  {'verdict':<13}structure\n"
    )
    out.write(head)
    for k in report.kinds:
        c = k.check
        p = "-" if c.p_value is None else f"{c.p_value:.2f}"
        out.write(
            f"{k.label:<30}{k.key[1]:<7}{c.n_real:>7}{c.n_train or 0:>8}  "
            f"{_env(c.envelopes['p50']):<24}"
            f"{_env(c.envelopes['p95']):<24}{_env(c.envelopes['max']):<24}{p:>6}  "
            f"{c.verdict:<13}{k.structure}\n"
        )
    if not report.kinds:
        out.write("(no request kind held out)\n")
    for direction, info in report.directions.items():
        for name, value in info.items():
            if isinstance(value, dict) and "runs" in value:
                out.write(
                    f"{direction} side of {name}: {value['structurally_conformant_runs']}/"
                    f"{value['runs']} runs without structural findings\n"
                )
        other = info.get("other_findings")
        if other:
            out.write(f"{direction} side, findings of no kind: {other}\n")
    for k in report.kinds:
        if k.verdict == "implausible":
            out.write(f"implausible {k.label} ({k.key[1]}): {k.check.reason}\n")
    n_bad = sum(1 for k in report.kinds if k.verdict == "implausible")
    n_few = sum(1 for k in report.kinds if k.verdict == "insufficient")
    out.write(
        f"\nverdict: {report.verdict.upper()} ({len(report.kinds)} kinds: {n_bad} implausible, "
        f"{n_few} insufficient); {report.runtime_s:.0f} s\n"
    )
