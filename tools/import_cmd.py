# `cyncsim import CAPTURE... -o MODEL [--json] [--into MODEL]`: learn a device model from
# captures; with --into, merge what the new captures teach into an existing model (without
# re-reading the captures it was learned from: replay/model/_merge.py).
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from cyncsim.replay.capture import HEAD_BYTES, detect_format, load_bytes
from cyncsim.replay.errors import CyncError, ModelError
from cyncsim.replay.model import DeviceModel, ModelLearner
from cyncsim.replay.model.importer import import_files
from cyncsim.tools._capture_args import add_capture_options, cloud_ports
from cyncsim.tools.progress import progress_callback

__all__ = ["load_base_model", "print_model", "register", "run", "show_model_file"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser(
        "import",
        help=help_text,
        description="Read captures, learn how the devices behave, write a model file.",
    )
    p.add_argument("captures", nargs="+", metavar="CAPTURE")
    p.add_argument("-o", "--output", metavar="MODEL", help="model file to write (msgpack)")
    p.add_argument("--json", action="store_true", help="print what was learned as JSON")
    p.add_argument(
        "--into",
        metavar="MODEL",
        help="merge the new captures into this model (written to -o, the file is not changed)",
    )
    add_capture_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    ports = cloud_ports(args)
    base = load_base_model(args.into) if args.into else None  # refused before any reading
    # Read and learn in one pass, chunk by chunk: the progress bar covers both, memory stays
    # bounded, and Ctrl-C leaves nothing behind (the model is written only at the end, to a
    # temporary file renamed over -o).
    learner = ModelLearner()
    for path in args.captures:
        with progress_callback(
            f"reading and learning {Path(path).name}",
            enabled=False if args.no_progress else None,
        ) as cb:
            import_files([path], cloud_ports=ports, progress=lambda _p: cb, learner=learner)
    if not learner.exchanges.packets:
        # An empty model would be written and look like a success: refuse, write nothing.
        found = ", ".join(f"{n} {reason}" for reason, n in sorted(learner.findings.items()))
        raise CyncError(
            f"nothing to learn: {', '.join(args.captures)} hold no Cync packets"
            + (f" ({found})" if found else ""),
            reason="no_packets",
        )
    model = learner.finish()
    if base is not None:
        model = base.merge(model)
    if args.output:
        model.save(args.output)
    print_model(model, out, as_json=args.json)
    if args.output and not args.json:
        out.write(f"model written to {args.output}\n")
    return 0


def load_base_model(path: str) -> DeviceModel:
    """The model ``--into`` names; a capture or another kind of file is one clear error."""
    fmt = detect_format(load_bytes(path, HEAD_BYTES))
    if fmt not in ("model", "unknown"):
        raise ModelError(
            f"is a {fmt} capture, not a model: --into takes a model written by cyncsim import",
            path=path,
            reason="not_a_model",
        )
    return DeviceModel.load(path)


def show_model_file(path: str, out: TextIO, *, as_json: bool) -> None:
    print_model(DeviceModel.load(path), out, as_json=as_json)


def print_model(model: DeviceModel, out: TextIO, *, as_json: bool) -> None:
    summary: dict[str, Any] = model.summary()
    if as_json:
        out.write(json.dumps(summary) + "\n")
        return
    out.write(f"sources: {', '.join(str(s['name']) for s in model.sources)}\n")
    for src in model.sources:  # provenance: what each capture brought
        sha = str(src.get("sha256", ""))[:12] or "-"
        out.write(
            f"  {src['name']}: variant {src.get('variant', 'none')}, {src.get('packets', 0)} "
            f"packets, sha256 {sha}\n"
        )
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
