# `cyncsim diff REFERENCE CANDIDATE... [--json] [--html REPORT.html] [--tolerance ...]`
#
# Thin front end over replay.conformance: the reference is a model file (recognised by its
# content) or captures to learn from; the candidates are captures.  Prints a timing table per
# request kind and the first findings of each kind with their bytes, differing bytes in
# [brackets]; --json prints the whole report as one object; --html writes a self-contained
# report with latency CDF plots.  Exit status: 0 conformant, 1 nonconformant, 2 usage or
# input errors (a CyncError becomes one line on stderr in tools/cli.py).
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from cyncsim.replay.capture import CaptureResult, read_capture
from cyncsim.replay.conformance import (
    DiffReport,
    TimingRow,
    Tolerance,
    diff,
    load_reference,
)
from cyncsim.replay.conformance.render import render_findings
from cyncsim.replay.errors import CyncError
from cyncsim.tools._capture_args import add_capture_options, cloud_ports
from cyncsim.tools._extras import require
from cyncsim.tools._output import check_writable
from cyncsim.tools.progress import progress_callback

__all__ = [
    "add_report_options",
    "check_report_options",
    "emit_report",
    "print_report",
    "register",
    "run",
]


def _tolerance(text: str) -> Tolerance:
    try:
        return Tolerance.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_report_options(p: argparse.ArgumentParser) -> None:
    """--json, --html, --tolerance and --max-findings: the report options of diff and replay."""
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--html", metavar="REPORT.html", help="write a self-contained HTML report")
    p.add_argument(
        "--tolerance",
        type=_tolerance,
        default=Tolerance(),
        metavar="T",
        help=(
            "timing tolerance: a number (max slack KS distance, default "
            f"{Tolerance().ks}) or key=value pairs ks=,rel=,alpha=,min_samples= "
            f"(defaults {Tolerance().as_dict()})"
        ),
    )
    p.add_argument(
        "--max-findings",
        type=int,
        default=3,
        metavar="N",
        help="findings shown per kind in the text output (default 3; all in --json)",
    )


def check_report_options(args: argparse.Namespace, verb: str) -> None:
    """The report options' checks, made before any work."""
    if args.html:
        check_writable(args.html, f"--html {args.html}")
        require("matplotlib", f"{verb} --html (its plots)")
    if args.max_findings < 0:
        raise CyncError(f"--max-findings {args.max_findings} is negative", reason="usage")


def emit_report(
    report: DiffReport, args: argparse.Namespace, out: TextIO, *, lines: Sequence[str] = ()
) -> int:
    """Write the report as the options ask (HTML file, JSON or text, then ``lines``); the
    exit status: 0 conformant, 1 not."""
    if args.html:
        from cyncsim.tools._diff_report import write_html

        write_html(report, args.html)
    if args.json:
        out.write(json.dumps(report.as_dict()) + "\n")
    else:
        print_report(report, out, max_findings=args.max_findings)
        for line in lines:
            out.write(line + "\n")
        if args.html:
            out.write(f"HTML report written to {args.html}\n")
    return 0 if report.conformant else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser(
        "diff",
        help=help_text,
        description=(
            "Compare candidate captures (e.g. a simulator recording or a new capture of a "
            "real device) with a reference: a model file or captures to learn one from. "
            "Exit status 0 when conformant, 1 when not, 2 on usage or input errors."
        ),
    )
    p.add_argument("reference", metavar="REFERENCE", help="model file or capture")
    p.add_argument("candidates", nargs="+", metavar="CANDIDATE", help="capture to check")
    p.add_argument(
        "--reference-also",
        action="append",
        default=[],
        metavar="CAPTURE",
        help="another capture to learn the reference from (repeatable)",
    )
    add_report_options(p)
    add_capture_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    ports = cloud_ports(args)
    check_report_options(args, "diff")
    ref = load_reference([args.reference, *args.reference_also], cloud_ports=ports)
    result = CaptureResult()
    for path in args.candidates:
        with progress_callback(
            f"reading {Path(path).name}", enabled=False if args.no_progress else None
        ) as cb:
            result.extend(read_capture(path, cloud_ports=ports, progress=cb))
    return emit_report(diff(ref, result, args.tolerance), args, out)


# ---------------------------------------------------------------------- text output
def _q(row: TimingRow, side: dict[str, float]) -> str:
    if not side:
        return "-"
    scale, digits = (1.0, 1) if row.basis == "idle" else (1000.0, 1)
    return "/".join(f"{side[k] * scale:.{digits}f}" for k in ("p50", "p95", "p99"))


def print_report(report: DiffReport, out: TextIO, *, max_findings: int = 3) -> None:
    errors = sum(1 for f in report.findings if f.severity == "error")
    warnings = sum(1 for f in report.findings if f.severity == "warning")
    out.write(f"reference: {', '.join(Path(s).name for s in report.reference)}\n")
    for src, variant in report.variants.items():
        out.write(f"candidate: {Path(src).name} ({variant} variant)\n")
    for note in report.notes:
        out.write(f"note: {note}\n")
    tol = report.tolerance
    out.write(
        f"{report.packets} candidate packets; tolerance: slack distance > {tol.ks} "
        f"(slack x{1 + tol.rel:g}) and p < {tol.alpha} fails, fewer than {tol.min_samples} "
        "samples is insufficient\n\n"
    )
    _print_timing(report, out)
    _print_coverage(report, out)
    _print_findings(report, out, max_findings)
    out.write(
        f"\nverdict: {report.verdict.upper()} ({errors} errors, {warnings} warnings, "
        f"{len(report.findings) - errors - warnings} info)\n"
    )


def _print_timing(report: DiffReport, out: TextIO) -> None:
    out.write("timing (latency ms p50/p95/p99; heartbeat idle in s)\n")
    out.write(
        f"{'request -> response':<34}{'role':<7}{'ref n':>6}{'cand n':>7}  "
        f"{'reference':<22}{'candidate':<22}{'basis':<8}{'dist':>5}{'KS D':>6}{'p':>9}"
        "  verdict\n"
    )
    for row in report.timing:
        dist = "-" if row.distance is None else f"{row.distance:.2f}"
        ks = "-" if row.ks is None else f"{row.ks:.2f}"
        p = "-" if row.p_value is None else f"{row.p_value:.2g}"
        out.write(
            f"{row.label:<34}{row.role:<7}{row.ref_count:>6}{row.cand_count:>7}  "
            f"{_q(row, row.ref):<22}{_q(row, row.cand):<22}{row.basis:<8}{dist:>5}{ks:>6}"
            f"{p:>9}  {row.verdict.upper() if row.verdict == 'fail' else row.verdict}\n"
        )
    out.write("\n")


def _print_coverage(report: DiffReport, out: TextIO) -> None:
    kinds = [c for c in report.coverage if c.status != "new"]
    done = [c for c in kinds if c.status == "exercised"]
    out.write(f"coverage: {len(done)} of {len(kinds)} reference request kinds exercised\n")
    missing = [f"{c.sender} {c.kind}" for c in kinds if c.status == "not_exercised"]
    if missing:
        out.write(f"  not exercised: {', '.join(missing)}\n")
    new = [f"{c.sender} {c.kind} ({c.candidate})" for c in report.coverage if c.status == "new"]
    if new:
        out.write(f"  never in the reference: {', '.join(new)}\n")
    out.write("\n")


def _print_findings(report: DiffReport, out: TextIO, max_findings: int) -> None:
    out.write(render_findings(report, max_findings=max_findings))
