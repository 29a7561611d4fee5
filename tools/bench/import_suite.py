# `cyncsim bench import`: how fast captures are read and learned, next to what others do.
#
# Strategy: one generated pcap is read in interleaved rounds by read_capture (reader), the whole
# `cyncsim import` path (import), dpkt down to the TCP payload, a struct walk over the record
# headers (floor) and scapy's rdpcap (on a slice), each result checked outside the clock; the
# text reader reads the shared MITM logs.  The scale table imports generated pcaps of 200k, 1M
# and (full size) 5M segments, each in a fresh process reporting its time and peak RSS.
from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from cyncsim import CaptureResult, read_capture
from cyncsim.replay.capture import accounting_errors, detect_format
from cyncsim.replay.capture.pcapwrite import generate_benchmark_pcap
from cyncsim.replay.model.importer import import_files
from cyncsim.tools._extras import require
from cyncsim.tools.bench import common
from cyncsim.tools.bench.common import BenchOptions, Case, Check, Column, Log, SuiteResult

__all__ = ["SPEC", "dpkt_parse", "import_model", "pcap_slice", "run", "struct_floor", "text_row"]

TARGET_RATE = 100_000.0  # segments per second, reader and end to end
TARGET_VS_DPKT = 3.0
TARGET_VS_FLOOR = 0.4
SCALE_FLAT = 1.2  # the slowest time per segment over the fastest, across the scale sizes
SCALE_RSS_MB = 1024.0


@dataclass(frozen=True, slots=True)
class Size:
    segments: int
    connections: int
    scapy_segments: int
    scale: tuple[int, ...]


SCALE = "scale: cyncsim import of generated pcaps, each in a fresh process"
SPEC = common.SuiteSpec(
    "import",
    full=Size(200_000, 20, 20_000, (200_000, 1_000_000, 5_000_000)),
    quick=Size(20_000, 20, 2_000, (200_000, 1_000_000)),
    columns=[
        Column("name", "reader"),
        Column("what", "does"),
        Column("items", "items", ",d"),
        Column("unit", "unit"),
        Column("median_s", "median s", ".3f"),
        Column("per_s", "items/s", ",.0f"),
        Column("vs_dpkt", "vs dpkt", ".2f"),
        Column("vs_floor", "vs floor", ".3f"),
    ],
    details={
        SCALE: [
            Column("segments", "segments", ",d"),
            Column("packets", "packets", ",d"),
            Column("seconds", "wall s", ".2f"),
            Column("cpu_seconds", "CPU s", ".2f"),
            Column("us_per_segment", "CPU us/segment", ".2f"),
            Column("vs_smallest", "vs smallest", ".2f"),
            Column("peak_rss_mb", "peak RSS MB", ",.0f"),
        ]
    },
)
_WHAT = {
    "reader": "read_capture: reassembly + decode + flows",
    "import": "cyncsim import: read + reassembly + decode + learn + write",
    "dpkt": "pcap.Reader + Ethernet(...).data.data.data",
    "floor": "struct walk over the record headers",
    "scapy": "rdpcap on the first segments",
}


def _fail(message: str) -> Exception:
    return common.fail("import", message)


def _records(buf: bytes, limit: int | None = None) -> tuple[int, int]:
    """(records, end offset) of the first ``limit`` records of a classic pcap in ``buf``."""
    if buf[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        unpack = struct.Struct("<IIII").unpack_from
    elif buf[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        unpack = struct.Struct(">IIII").unpack_from
    else:
        raise _fail(f"not a classic pcap file (magic {buf[:4].hex()})")
    n, pos, count = len(buf), 24, 0
    while pos + 16 <= n and (limit is None or count < limit):
        pos += 16 + unpack(buf, pos)[2]
        count += 1
    return count, pos


def struct_floor(path: Path) -> int:
    """The floor: read the file and walk its record headers with struct; the record count."""
    return _records(path.read_bytes())[0]


def pcap_slice(src: Path, dest: Path, records: int) -> int:
    """Write the first ``records`` records of pcap ``src`` to ``dest``; the count written."""
    buf = src.read_bytes()
    count, end = _records(buf, records)
    dest.write_bytes(buf[:end])
    return count


def dpkt_parse(path: Path) -> tuple[int, int]:
    """dpkt's full parse down to the TCP payload: (frames, payload bytes)."""
    dpkt = require("dpkt", "bench import")
    frames = payload = 0
    with path.open("rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            payload += len(dpkt.ethernet.Ethernet(frame).data.data.data)
            frames += 1
    return frames, payload


def import_model(path: Path, out: Path) -> int:
    """What `cyncsim import PATH -o OUT` does (read, learn, write); the packets learned."""
    model = import_files([str(path)]).finish()
    model.save(out)
    return sum(n for src in model.sources if isinstance(n := src["packets"], int))


# Run in a fresh interpreter: the import's own time and the process's peak RSS.
_CHILD = """
import json, sys, time
from pathlib import Path
from cyncsim.tools.bench.import_suite import import_model
t, c = time.perf_counter(), time.process_time()
packets = import_model(Path(sys.argv[1]), Path(sys.argv[2]))
seconds, cpu = time.perf_counter() - t, time.process_time() - c
hwm = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:")]
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "packets": packets,
                  "peak_rss_kb": int(hwm[0].split()[1]) if hwm else None}))
"""


def _scale_rows(workdir: Path, sizes: tuple[int, ...], conns: int, log: Log) -> common.Rows:
    """One fresh-process import per size: wall and CPU seconds, CPU time per segment (the
    process's own: other load does not bend the curve), peak RSS."""
    rows: common.Rows = []
    for segments in sizes:
        pcap, out = workdir / f"import-scale-{segments}.pcap", workdir / "import-scale.model"
        log(f"import: scale, generating {segments:,} segments")
        stats = generate_benchmark_pcap(pcap, segments, conns, seed=0)
        log(f"import: scale, importing {stats['segments']:,} segments in a child process")
        argv = [sys.executable, "-c", _CHILD, str(pcap), str(out)]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        finally:
            pcap.unlink(missing_ok=True)
            out.unlink(missing_ok=True)
        if proc.returncode:
            raise _fail(f"scale import of {segments:,} segments: {proc.stderr.strip()[-300:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        if got["packets"] != stats["packets"]:
            raise _fail(f"scale import learned {got['packets']} packets of {stats['packets']}")
        cpu, rss, n = got["cpu_seconds"], got["peak_rss_kb"], stats["segments"]
        row = {"segments": n, "packets": stats["packets"], "seconds": got["seconds"]}
        row |= {"cpu_seconds": cpu, "us_per_segment": cpu / n * 1e6}
        rows.append(row | {"peak_rss_mb": None if rss is None else rss / 1024})
    fastest = min(r["us_per_segment"] for r in rows)
    for r in rows:
        r["vs_smallest"] = r["us_per_segment"] / rows[0]["us_per_segment"]
        r["vs_fastest"] = r["us_per_segment"] / fastest
    return rows


def _row(name: str, what: str, items: int, unit: str, timing: common.Timing) -> dict[str, Any]:
    row = {"name": name, "what": what, "items": items, "unit": unit, "median_s": timing.median}
    return row | {"samples_s": list(timing.samples), "per_s": timing.rate(items)}


def text_row(captures: Path | None, repeats: int) -> dict[str, Any]:
    """The MITM text reader on the shared text captures."""
    row: dict[str, Any] = {"name": "text", "what": "read_capture on the MITM text logs"}
    if captures is None or not captures.is_dir():
        return {**row, "status": "skipped", "reason": f"no captures folder ({captures})"}
    files = [p for p in sorted(captures.iterdir()) if p.is_file()]
    files = [p for p in files if detect_format(p.read_bytes()[:256]) == "text"]
    if not files:
        return {**row, "status": "skipped", "reason": f"no MITM text logs in {captures}"}
    expected = [read_capture(p).packet_count for p in files]
    verify = common.expect("import", "the text reader's packet counts", expected)
    timing = common.measure(lambda: [read_capture(p).packet_count for p in files], repeats, verify)
    what = f"read_capture on {len(files)} MITM text logs"
    row = _row("text", what, sum(expected), "packets", timing) | {"status": "ok"}
    names, size = ", ".join(p.name for p in files), sum(p.stat().st_size for p in files)
    return row | {"files": names, "bytes": size}


def _check_reader(got: CaptureResult, stats: dict[str, int], conns: int, *, full: bool) -> None:
    """The reader found exactly what the generator wrote (``full``: byte accounting too)."""
    if got.packet_count != stats["packets"] or len(got.flows) != conns:
        raise _fail(
            f"the reader found {got.packet_count} packets in {len(got.flows)} flows, "
            f"the generator wrote {stats['packets']} in {conns}"
        )
    if got.findings:
        first = got.findings[0]
        raise _fail(
            f"{len(got.findings)} findings on a clean capture: {first.reason} {first.detail}"
        )
    errors = accounting_errors(got) if full else []
    seen = sum(sum(f.bytes_seen.values()) for f in got.flows) if full else stats["payload_bytes"]
    if errors or seen != stats["payload_bytes"]:
        raise _fail(f"byte accounting: {errors[:1]}, {seen} of {stats['payload_bytes']} bytes")


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def run(opts: BenchOptions, log: Log) -> SuiteResult:
    require("dpkt", "bench import")  # both extras checked before minutes of work
    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)  # no start-up chatter
    rdpcap = require("scapy.utils", "bench import").rdpcap
    size = SPEC.size(opts)
    pcap, part = opts.workdir / "import-bench.pcap", opts.workdir / "import-bench-slice.pcap"
    log(f"import: generating a {size.segments:,}-segment pcap")
    stats = generate_benchmark_pcap(pcap, size.segments, size.connections, seed=0)
    segments = stats["segments"]
    _check_reader(read_capture(pcap), stats, size.connections, full=True)  # outside any clock
    sliced = pcap_slice(pcap, part, size.scapy_segments)
    rdpcap(str(part), count=10)  # scapy builds some tables on its first use: not timed
    model_out = opts.workdir / "import-bench.model"
    log(f"import: reader, import, dpkt, floor, scapy ({size.scapy_segments:,}), interleaved")
    expect = common.expect
    cases: dict[str, Case] = {
        "reader": (
            lambda: read_capture(pcap),
            lambda got: _check_reader(got, stats, size.connections, full=False),
        ),
        "import": (
            lambda: import_model(pcap, model_out),
            expect("import", "import", stats["packets"]),
        ),
        "dpkt": (
            lambda: dpkt_parse(pcap),
            expect("import", "dpkt", (segments, stats["payload_bytes"])),
        ),
        "floor": (lambda: struct_floor(pcap), expect("import", "the struct walk", segments)),
        "scapy": (lambda: len(rdpcap(str(part))), expect("import", "scapy", sliced)),
    }
    timings = common.measure_rounds(cases, opts.repeats, log)
    log("import: MITM text reader")
    text = text_row(opts.captures, opts.repeats)
    rows = [
        _row(name, _WHAT[name], sliced if name == "scapy" else segments, "segments", timing)
        for name, timing in timings.items()
    ]
    by_name = {row["name"]: row for row in rows}
    for row in rows:
        row["vs_dpkt"] = row["per_s"] / by_name["dpkt"]["per_s"]
        row["vs_floor"] = row["per_s"] / by_name["floor"]["per_s"]
    reader, imported = by_name["reader"], by_name["import"]
    scale = _scale_rows(opts.workdir, size.scale, size.connections, log)
    peak = max((r["peak_rss_mb"] for r in scale if r["peak_rss_mb"] is not None), default=0.0)
    flat = max(r["vs_fastest"] for r in scale)
    checks = [
        Check("reader segments/s", reader["per_s"], TARGET_RATE, unit=" seg/s", spec=",.0f"),
        Check("reader / dpkt", reader["vs_dpkt"], TARGET_VS_DPKT, unit="x", spec=".2f"),
        Check("reader / floor", reader["vs_floor"], TARGET_VS_FLOOR, unit="x", spec=".3f"),
        Check("import segments/s", imported["per_s"], TARGET_RATE, unit=" seg/s", spec=",.0f"),
        Check("import / dpkt", imported["vs_dpkt"], TARGET_VS_DPKT, unit="x", spec=".2f"),
        Check("scale: slowest / fastest CPU time per segment", flat, SCALE_FLAT, "<=", "x", ".2f"),
        Check("scale: peak RSS", peak, SCALE_RSS_MB, op="<=", unit=" MB", spec=",.0f"),
    ]
    title = (
        f"{segments:,} TCP segments over {size.connections} connections "
        f"({stats['packets']:,} Cync packets), median of {opts.repeats}"
    )
    params: dict[str, Any] = {**stats, "connections": size.connections}
    params |= {"file_bytes": pcap.stat().st_size, "scapy_segments": sliced}
    params |= {"repeats": opts.repeats, "dpkt": _version("dpkt"), "scapy": _version("scapy")}
    params["scale_segments"] = list(size.scale)  # (5M at full size only)
    notes = [f"text row skipped: {text['reason']}"] if text.get("status") == "skipped" else []
    if opts.quick:
        notes.append("quick size: fixed costs weigh more; judge targets on a full run")
    result = SPEC.result(opts, title, [*rows, text], checks, params, notes, {SCALE: scale})
    if opts.profile:
        log("import: profiling the reader once, and the import once")
        result.add_profile(common.profile_by_file(lambda: read_capture(pcap)), "one read_capture")
        profile = common.profile_by_file(lambda: import_model(pcap, model_out))
        result.add_profile(profile, "one cyncsim import")
    return result
