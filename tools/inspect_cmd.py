# `cyncsim inspect CAPTURE... [--json]`: every packet of a capture, then the summary.
#
# A saved model file is recognised from its content and shown the way `cyncsim import`
# prints what it learned.
from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from cyncsim.replay.capture import (
    HEAD_BYTES,
    CaptureResult,
    detect_format,
    load_bytes,
    read_capture,
)
from cyncsim.replay.describe import describe
from cyncsim.tools._capture_args import add_capture_options, cloud_ports
from cyncsim.tools.progress import progress_callback

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser(
        "inspect",
        help=help_text,
        description="Decode every packet of the given captures and print a summary.",
    )
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help="capture or model file")
    p.add_argument("--json", action="store_true", help="JSON Lines output")
    add_capture_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    ports = cloud_ports(args)
    models = []
    combined = CaptureResult()
    for path in args.captures:
        if detect_format(load_bytes(path, HEAD_BYTES)) == "model":
            models.append(path)
            continue
        with progress_callback(
            f"reading {Path(path).name}", enabled=False if args.no_progress else None
        ) as cb:
            result = read_capture(path, cloud_ports=ports, progress=cb)
        print_result(result, out, as_json=args.json)
        combined.extend(result)
    if models:
        from cyncsim.tools.import_cmd import show_model_file

        for path in models:
            show_model_file(path, out, as_json=args.json)
    if combined.sources:
        print_summary(combined, out, as_json=args.json)
    return 0


def print_result(result: CaptureResult, out: TextIO, *, as_json: bool) -> None:
    for flow in result.flows:
        for fp in flow.packets:
            pkt = fp.packet
            if as_json:
                raw = pkt.encode()
                obj = {
                    "ts": fp.ts,
                    "flow": flow.id,
                    "sender": fp.sender,
                    "type": pkt.type,
                    "name": pkt.name,
                    "length": len(raw),
                    "hex": raw.hex(),
                    "checksum_ok": pkt.checksum_ok,
                }
                if pkt.defect is not None:
                    obj["defect"] = pkt.defect
                if fp.tags:
                    obj["tags"] = list(fp.tags)
                out.write(json.dumps(obj) + "\n")
                continue
            cs = {None: "", True: " cs=ok", False: " cs=BAD"}[pkt.checksum_ok]
            flag = f" [{pkt.defect}]" if pkt.defect else ""
            tags = "".join(f" [{t}]" for t in fp.tags)
            out.write(
                f"{_iso(fp.ts)} {flow.id} {fp.sender:<6} 0x{pkt.type:02x} {pkt.name:<13} "
                f"{len(pkt):>4}B {describe(pkt)}{cs}{flag}{tags}\n"
            )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def print_summary(result: CaptureResult, out: TextIO, *, as_json: bool) -> None:
    summary = result.summary()
    if as_json:
        summary["findings_list"] = [f.as_dict() for f in result.findings]
        out.write(json.dumps({"summary": summary}) + "\n")
        return
    out.write(
        f"\n{summary['packets']} packets in {summary['flows']} flows "
        f"{summary['flow_kinds']}, {summary['flagged_packets']} flagged, "
        f"{summary['findings']} findings, {summary['bytes']} payload bytes\n"
    )
    out.write(f"packet types: {summary['packet_types']}\n")
    if result.findings:
        out.write(f"findings by reason: {summary['finding_reasons']}\n")
        shown: dict[str, int] = {}
        for f in result.findings:
            n = shown.get(f.reason, 0)
            shown[f.reason] = n + 1
            if n < 3:
                out.write(
                    f"  {f.reason}: {f.flow} {f.sender or '-'} offset {f.offset} "
                    f"length {f.length} {f.detail}\n"
                )
            elif n == 3:
                out.write(f"  {f.reason}: ... (all in --json)\n")
