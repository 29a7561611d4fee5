# `cyncsim import CAPTURE... -o MODEL [--json]`: learn a device model from captures.
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from cyncsim.replay.capture import load_bytes, read_capture
from cyncsim.replay.capture.model import CaptureResult
from cyncsim.replay.errors import CyncError
from cyncsim.replay.model import DeviceModel, learn_model
from cyncsim.tools._capture_args import add_capture_options, cloud_ports
from cyncsim.tools.progress import progress_callback

__all__ = ["print_model", "register", "run", "show_model_file"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser(
        "import",
        help=help_text,
        description="Read captures, learn how the devices behave, write a model file.",
    )
    p.add_argument("captures", nargs="+", metavar="CAPTURE")
    p.add_argument("-o", "--output", metavar="MODEL", help="model file to write (msgpack)")
    p.add_argument("--json", action="store_true", help="print what was learned as JSON")
    add_capture_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    ports = cloud_ports(args)
    result = CaptureResult()
    raw: dict[str, bytes] = {}
    for path in args.captures:
        with progress_callback(
            f"reading {Path(path).name}", enabled=False if args.no_progress else None
        ) as cb:
            result.extend(read_capture(path, cloud_ports=ports, progress=cb))
        raw[path] = load_bytes(path)
    if not any(flow.packets for flow in result.flows):
        # An empty model would be written and look like a success: refuse, write nothing.
        raise CyncError(
            f"nothing to learn: {', '.join(args.captures)} hold no Cync packets"
            + (f" ({_finding_summary(result)})" if result.findings else ""),
            reason="no_packets",
        )
    model = learn_model(result, raw)
    if args.output:
        model.save(args.output)
    print_model(model, out, as_json=args.json)
    if args.output and not args.json:
        out.write(f"model written to {args.output}\n")
    return 0


def _finding_summary(result: CaptureResult) -> str:
    counts: dict[str, int] = {}
    for f in result.findings:
        counts[f.reason] = counts.get(f.reason, 0) + 1
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))


def show_model_file(path: str, out: TextIO, *, as_json: bool) -> None:
    print_model(DeviceModel.load(path), out, as_json=as_json)


def print_model(model: DeviceModel, out: TextIO, *, as_json: bool) -> None:
    summary: dict[str, Any] = model.summary()
    if as_json:
        out.write(json.dumps(summary) + "\n")
        return
    out.write(f"sources: {', '.join(str(s['name']) for s in model.sources)}\n")
    out.write(
        f"{'variant':<8}{'role':<8}{'request':<14}{'samples':>8}{'p50 ms':>10}{'p95 ms':>10}"
        f"{'p99 ms':>10}  responses\n"
    )
    for k in summary["kinds"]:
        lat = k["latency_ms"]
        out.write(
            f"{k['variant']:<8}{k['role']:<8}{k['request']:<14}{k['samples']:>8}"
            f"{lat.get('p50', 0):>10.1f}{lat.get('p95', 0):>10.1f}{lat.get('p99', 0):>10.1f}"
            f"  {' '.join(k['responses'])}"
            + (f"  ({k['ambiguous_dropped']} ambiguous dropped)" if k["ambiguous_dropped"] else "")
            + "\n"
        )
    hb = summary["heartbeat_idle_s"]
    if hb:
        out.write(f"heartbeat idle p50 {hb['p50']} s ({hb['samples']} samples, {hb['method']})\n")
        for v, h in hb["by_variant"].items():
            out.write(f"  {v}: p50 {h['p50']} s, {h['samples']} samples, {h['method']}\n")
    out.write(f"devices: {summary['devices']}\n")
    for f in summary["findings"]:
        out.write(f"finding {f['reason']}: {f['count']}\n")
