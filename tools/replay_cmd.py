# `cyncsim replay CAPTURE... --against HOST:PORT [--side devices|controller] [options]`
#
# Thin front end over simulator.replay.replay_capture: replay one side of the captures against
# a live peer (loopback only), and print the verdict exactly as `cyncsim diff` does (the same
# report, --json and --html, and the same exit status: 0 conformant, 1 not, 2 usage or
# input errors, a CyncError being one line on stderr in tools/cli.py).
from __future__ import annotations

import argparse
import asyncio
import json
from typing import TextIO

from cyncsim.replay.conformance import Tolerance
from cyncsim.replay.errors import CyncError
from cyncsim.tools._extras import require
from cyncsim.tools._output import check_writable
from cyncsim.tools.diff_cmd import print_report
from cyncsim.tools.serve_cmd import parse_address

__all__ = ["register", "run"]


def _tolerance(text: str) -> Tolerance:
    try:
        return Tolerance.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _device(text: str) -> bytes:
    try:
        value = bytes.fromhex(text.replace(" ", ""))
    except ValueError:
        value = b""
    if len(value) != 4:
        raise argparse.ArgumentTypeError(f"{text!r} is not a 4-byte device id like 6457e7f2")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser(
        "replay",
        help=help_text,
        description=(
            "Replay one side of captured sessions against a live peer on loopback and judge "
            "the peer against the capture, as `cyncsim diff` does.  --side devices (default): "
            "every captured device dials the controller at --against from its own loopback "
            "address and sends what it sent on its own, at the captured times; its answers "
            "come from the model learned from the same capture.  --side controller: the "
            "captured controller's own packets go to the device listening at --against, "
            "rewritten to its device id and mesh nodes.  Exit status 0 when conformant, 1 "
            "when not, 2 on usage or input errors."
        ),
    )
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help="capture to replay")
    p.add_argument(
        "--against", required=True, metavar="HOST:PORT", help="the peer under test (loopback)"
    )
    p.add_argument(
        "--side",
        choices=("devices", "controller"),
        default="devices",
        help="the side replayed from the capture (default devices: the peer is a controller)",
    )
    p.add_argument("--tls", action="store_true", help="connect with TLS (old firmware suites)")
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="multiply the captured times (and learned delays) by X (default 1)",
    )
    p.add_argument(
        "--max-gap",
        type=float,
        metavar="SECONDS",
        help="shorten every idle gap of the capture to at most this long",
    )
    p.add_argument(
        "--peer-time-scale",
        type=float,
        metavar="X",
        help="the peer is a simulator run with --time-scale X: its clock is divided by X "
        "before the verdict",
    )
    p.add_argument(
        "--device",
        type=_device,
        action="append",
        metavar="ID",
        help="replay only this captured device (8 hex digits; repeatable)",
    )
    p.add_argument("--seed", type=int, help="root seed of the learned answers' delays")
    p.add_argument("--record", metavar="FILE", help="record the session (pcapng, .txt: text)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--html", metavar="REPORT.html", help="write a self-contained HTML report")
    p.add_argument(
        "--tolerance",
        type=_tolerance,
        default=Tolerance(),
        metavar="T",
        help=f"timing tolerance, as for `cyncsim diff` (default {Tolerance().as_dict()})",
    )
    p.add_argument(
        "--max-findings",
        type=int,
        default=3,
        metavar="N",
        help="findings shown per kind in the text output (default 3; all in --json)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from cyncsim.simulator.replay import replay_capture

    host, port = parse_address(args.against)
    if not (args.time_scale >= 0 and args.time_scale < float("inf")):
        raise CyncError(f"--time-scale {args.time_scale}: need a finite number >= 0",
                        reason="usage")  # fmt: skip
    if args.max_gap is not None and not args.max_gap > 0:
        raise CyncError(f"--max-gap {args.max_gap}: need seconds > 0", reason="usage")
    if args.max_findings < 0:
        raise CyncError(f"--max-findings {args.max_findings} is negative", reason="usage")
    if args.html:
        check_writable(args.html, f"--html {args.html}")
        require("matplotlib", "replay --html (its plots)")
    if args.record:
        check_writable(args.record, f"--record {args.record}")
    report = asyncio.run(
        replay_capture(
            args.captures,
            host,
            port,
            side=args.side,
            tls=args.tls,
            time_scale=args.time_scale,
            max_gap=args.max_gap,
            seed=args.seed,
            record=args.record,
            devices=args.device,
            tolerance=args.tolerance,
            peer_time_scale=args.peer_time_scale,
        )
    )
    if args.html:
        from cyncsim.tools._diff_report import write_html

        write_html(report, args.html)
    if args.json:
        out.write(json.dumps(report.as_dict()) + "\n")
    else:
        print_report(report, out, max_findings=args.max_findings)
        if args.record:
            out.write(f"session recorded to {args.record}\n")
        if args.html:
            out.write(f"HTML report written to {args.html}\n")
    return 0 if report.conformant else 1
