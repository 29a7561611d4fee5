# `cyncsim bench SUITE [--json FILE] [--quick]`: run benchmark suites, print their tables.
#
# A thin front end over tools/bench: the suites are registered there (common.SUITES), each
# returns a SuiteResult that is printed as a table and, with --json, written as the documented
# JSON (tools/bench/common.py).  `all` runs every registered suite; its JSON file is
# {"machine": ..., "suites": [one suite object each]}.  Missed targets are reported, not
# fatal: the exit status is 0 unless --check is given (then 1 when a target is missed).
from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path
from typing import Any, TextIO

from cyncsim.captures import shared_captures_dir
from cyncsim.replay.errors import CyncError
from cyncsim.tools._output import check_writable
from cyncsim.tools.bench.common import (
    SUITES,
    BenchOptions,
    load_suite,
    machine_info,
    render,
    stderr_log,
    suite_json,
    write_json,
)

__all__ = ["register", "run"]


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
            result = load_suite(name).run(opts, stderr_log)
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
