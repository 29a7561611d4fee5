# `cyncsim replay CAPTURE... --against HOST:PORT [--side devices|controller] [options]`
#
# Thin front end over simulator.replay.replay_capture: replay one side of the captures against
# a live peer (loopback only), and print the verdict exactly as `cyncsim diff` does (the same
# report, --json and --html, and the same exit status: 0 conformant, 1 not, 2 usage or
# input errors, a CyncError being one line on stderr in tools/cli.py).
from __future__ import annotations

import argparse
import asyncio
from typing import TextIO

from cyncsim.replay.errors import CyncError
from cyncsim.tools._output import check_writable
from cyncsim.tools.diff_cmd import add_report_options, check_report_options, emit_report
from cyncsim.tools.serve_cmd import parse_address

__all__ = ["register", "run"]


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
    add_report_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from cyncsim.simulator.replay import replay_capture

    host, port = parse_address(args.against)
    if not (args.time_scale >= 0 and args.time_scale < float("inf")):
        raise CyncError(f"--time-scale {args.time_scale}: need a finite number >= 0",
                        reason="usage")  # fmt: skip
    if args.max_gap is not None and not args.max_gap > 0:
        raise CyncError(f"--max-gap {args.max_gap}: need seconds > 0", reason="usage")
    check_report_options(args, "replay")
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
    lines = [f"session recorded to {args.record}"] if args.record else []
    return emit_report(report, args, out, lines=lines)
