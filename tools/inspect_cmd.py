# `cyncsim inspect CAPTURE... [--json]`: every packet of a capture, then the summary.
#
# A saved model file is recognised from its content and shown the way `cyncsim import`
# prints what it learned.  `-` (stdin) and FIFOs are read as live streams (replay.capture.
# stream): packets are printed as their records arrive, a batch at a time, and Ctrl-C prints
# the summary so far before the CLI exits with status 130.
from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from cyncsim.replay.capture import (
    HEAD_BYTES,
    CaptureResult,
    Finding,
    FlowPacket,
    detect_format,
    load_bytes,
    read_capture,
)
from cyncsim.replay.capture.model import Summary
from cyncsim.replay.describe import describe
from cyncsim.replay.errors import CaptureError
from cyncsim.tools._capture_args import add_capture_options, cloud_ports
from cyncsim.tools.progress import progress_callback

if TYPE_CHECKING:
    from cyncsim.replay.capture.stream import StreamBatch

__all__ = ["packet_line", "print_result", "register", "run"]

_CHUNK = 1 << 16
_LISTED_PER_REASON = 100  # findings of a stream listed in the summary, per reason


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser(
        "inspect",
        help=help_text,
        description="Decode every packet of the given captures and print a summary.",
    )
    p.add_argument(
        "captures",
        nargs="+",
        metavar="CAPTURE",
        help="capture or model file; - (stdin) or a FIFO is read as a live stream",
    )
    p.add_argument("--json", action="store_true", help="JSON Lines output")
    add_capture_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    ports = cloud_ports(args)
    models = []
    report = _Report()
    for path in args.captures:
        if _is_stream(path):
            _inspect_stream(path, ports, out, report, as_json=args.json)
            continue
        if detect_format(load_bytes(path, HEAD_BYTES)) == "model":
            models.append(path)
            continue
        with progress_callback(
            f"reading {Path(path).name}", enabled=False if args.no_progress else None
        ) as cb:
            result = read_capture(path, cloud_ports=ports, progress=cb)
        print_result(result, out, as_json=args.json)
        report.add_result(result)
    if models:
        from cyncsim.tools.import_cmd import show_model_file

        for path in models:
            show_model_file(path, out, as_json=args.json)
    if report.summary.sources:
        report.print(out, as_json=args.json)
    return 0


def _is_stream(path: str) -> bool:
    """``-`` (stdin) and FIFOs are read as streams, as their bytes arrive."""
    if path == "-":
        return True
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False  # the file reader says what is wrong with it


def _inspect_stream(
    path: str, ports: tuple[int, ...], out: TextIO, report: _Report, *, as_json: bool
) -> None:
    """Print packets as they arrive; Ctrl-C prints the summary so far, then stops."""
    from cyncsim.replay.capture.stream import CaptureStream  # (the pcap readers: when needed)

    source = "<stdin>" if path == "-" else path
    stream = CaptureStream(source, cloud_ports=ports)
    try:
        fd = sys.stdin.fileno() if path == "-" else _open_fifo(path)
        try:
            while True:
                # os.read returns what the pipe holds (up to the size) as soon as it holds
                # anything, where a buffered read would wait for the whole size.
                data = os.read(fd, _CHUNK)
                batch = stream.feed(data) if data else stream.close()
                _print_batch(batch, out, as_json=as_json)
                report.add_findings(batch.findings, listed=_LISTED_PER_REASON)
                out.flush()
                if not data:
                    break
        finally:
            if path != "-":
                os.close(fd)
    except KeyboardInterrupt:
        report.summary.merge(stream.summary())
        report.print(out, as_json=as_json)
        out.flush()
        raise
    report.summary.merge(stream.totals)


def _open_fifo(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY)  # waits for a writer, as cat does
    except OSError as exc:
        raise CaptureError(
            path, f"cannot read: {exc.strerror or exc}", reason="unreadable"
        ) from None


def _print_batch(batch: StreamBatch, out: TextIO, *, as_json: bool) -> None:
    for flow, fp in batch.packets:
        out.write(packet_line(flow.id, fp, as_json=as_json))


def print_result(result: CaptureResult, out: TextIO, *, as_json: bool) -> None:
    for flow in result.flows:
        for fp in flow.packets:
            out.write(packet_line(flow.id, fp, as_json=as_json))


def packet_line(flow_id: str, fp: FlowPacket, *, as_json: bool) -> str:
    """One packet as inspect prints it: a line of text, or a JSON object on one line."""
    pkt = fp.packet
    if as_json:
        raw = pkt.encode()
        obj = {
            "ts": fp.ts,
            "flow": flow_id,
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
        return json.dumps(obj) + "\n"
    cs = {None: "", True: " cs=ok", False: " cs=BAD"}[pkt.checksum_ok]
    flag = f" [{pkt.defect}]" if pkt.defect else ""
    tags = "".join(f" [{t}]" for t in fp.tags)
    return (
        f"{_iso(fp.ts)} {flow_id} {fp.sender:<6} 0x{pkt.type:02x} {pkt.name:<13} "
        f"{len(pkt):>4}B {describe(pkt)}{cs}{flag}{tags}\n"
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


class _Report:
    """The summary block of everything read: counters, and the findings it lists.

    A file's findings are all listed (they are in memory anyway); a stream's, at most
    ``listed`` per reason, the rest only counted, so a stream that runs for days does not
    pile them up.
    """

    def __init__(self) -> None:
        self.summary = Summary()
        self.findings: list[Finding] = []
        self.unlisted = 0
        self._per_reason: Counter[str] = Counter()

    def add_result(self, result: CaptureResult) -> None:
        self.summary.merge(result.tally())
        self.add_findings(result.findings)

    def add_findings(self, findings: list[Finding], listed: int | None = None) -> None:
        per_reason = self._per_reason
        for f in findings:
            n = per_reason[f.reason]
            per_reason[f.reason] = n + 1
            if listed is None or n < listed:
                self.findings.append(f)
            else:
                self.unlisted += 1

    def print(self, out: TextIO, *, as_json: bool) -> None:
        summary = self.summary.as_dict()
        if as_json:
            summary["findings_list"] = [f.as_dict() for f in self.findings]
            if self.unlisted:
                summary["findings_unlisted"] = self.unlisted
            out.write(json.dumps({"summary": summary}) + "\n")
            return
        out.write(
            f"\n{summary['packets']} packets in {summary['flows']} flows "
            f"{summary['flow_kinds']}, {summary['flagged_packets']} flagged, "
            f"{summary['findings']} findings, {summary['bytes']} payload bytes\n"
        )
        out.write(f"packet types: {summary['packet_types']}\n")
        if summary["findings"]:
            out.write(f"findings by reason: {summary['finding_reasons']}\n")
            shown: dict[str, int] = {}
            for f in self.findings:
                n = shown.get(f.reason, 0)
                shown[f.reason] = n + 1
                if n < 3:
                    out.write(
                        f"  {f.reason}: {f.flow} {f.sender or '-'} offset {f.offset} "
                        f"length {f.length} {f.detail}\n"
                    )
                elif n == 3:
                    where = f"the first {_LISTED_PER_REASON}" if self.unlisted else "all"
                    where += " in --json"
                    out.write(f"  {f.reason}: ... ({where})\n")
