# `cyncsim bench import`: how fast captures are read, next to what others do with the file.
#
# Strategy: one generated pcap is read in interleaved rounds by read_capture (reader), dpkt
# down to the TCP payload, a struct walk over the record headers (floor) and scapy's rdpcap
# (on a slice); each result is checked outside the clock.  The text reader reads the shared
# MITM logs.  dpkt and scapy come with the `cyncsim[bench]` extra.
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from cyncsim import CaptureResult, CyncError, read_capture
from cyncsim.replay.capture import accounting_errors, detect_format
from cyncsim.replay.capture.pcapwrite import generate_benchmark_pcap
from cyncsim.tools._extras import require
from cyncsim.tools.bench.common import (
    BenchOptions,
    Case,
    Check,
    Column,
    Log,
    SuiteResult,
    SuiteSpec,
    Timing,
    measure,
    measure_rounds,
    profile_by_file,
)

__all__ = ["SPEC", "dpkt_parse", "pcap_slice", "run", "struct_floor", "text_row"]

TARGET_RATE = 100_000.0  # segments per second, end to end
TARGET_VS_DPKT = 3.0
TARGET_VS_FLOOR = 0.4


@dataclass(frozen=True, slots=True)
class Size:
    segments: int
    connections: int
    scapy_segments: int


SPEC = SuiteSpec(
    "import",
    full=Size(200_000, 20, 20_000),
    quick=Size(20_000, 20, 2_000),
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
)
_WHAT = {
    "reader": "read_capture: reassembly + decode + flows",
    "dpkt": "pcap.Reader + Ethernet(...).data.data.data",
    "floor": "struct walk over the record headers",
    "scapy": "rdpcap on the first segments",
}


def _fail(message: str) -> CyncError:
    return CyncError(f"bench import: {message}", reason="bench")


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


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _row(name: str, what: str, items: int, unit: str, timing: Timing) -> dict[str, Any]:
    return {
        "name": name,
        "what": what,
        "items": items,
        "unit": unit,
        "median_s": timing.median,
        "samples_s": list(timing.samples),
        "per_s": timing.rate(items),
    }


def text_row(captures: Path | None, repeats: int) -> dict[str, Any]:
    """The MITM text reader on the shared text captures."""
    row: dict[str, Any] = {"name": "text", "what": "read_capture on the MITM text logs"}
    if captures is None or not captures.is_dir():
        return {**row, "status": "skipped", "reason": f"no captures folder ({captures})"}
    files = sorted(
        p
        for p in captures.iterdir()
        if p.is_file() and detect_format(p.read_bytes()[:256]) == "text"
    )
    if not files:
        return {**row, "status": "skipped", "reason": f"no MITM text logs in {captures}"}
    expected = [read_capture(p).packet_count for p in files]

    def verify(counts: list[int]) -> None:
        if counts != expected:
            raise _fail(f"text reader gave {counts} packets, then {expected}")

    timing = measure(lambda: [read_capture(p).packet_count for p in files], repeats, verify)
    what = f"read_capture on {len(files)} MITM text logs"
    return {
        **_row("text", what, sum(expected), "packets", timing),
        "status": "ok",
        "files": ", ".join(p.name for p in files),
        "bytes": sum(p.stat().st_size for p in files),
    }


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
    if full:
        errors = accounting_errors(got)
        seen = sum(sum(f.bytes_seen.values()) for f in got.flows)
        if errors or seen != stats["payload_bytes"]:
            raise _fail(f"byte accounting: {errors[:1]}, {seen} of {stats['payload_bytes']} bytes")


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

    def expect(what: str, want: object) -> Any:
        def verify(got: object) -> None:
            if got != want:
                raise _fail(f"{what} gave {got}, expected {want}")

        return verify

    log(f"import: reader, dpkt, floor, scapy ({size.scapy_segments:,} segments), interleaved")
    cases: dict[str, Case] = {
        "reader": (
            lambda: read_capture(pcap),
            lambda got: _check_reader(got, stats, size.connections, full=False),
        ),
        "dpkt": (lambda: dpkt_parse(pcap), expect("dpkt", (segments, stats["payload_bytes"]))),
        "floor": (lambda: struct_floor(pcap), expect("the struct walk", segments)),
        "scapy": (lambda: len(rdpcap(str(part))), expect("scapy", sliced)),
    }
    timings = measure_rounds(cases, opts.repeats, log)
    log("import: MITM text reader")
    text = text_row(opts.captures, opts.repeats)
    rows = [
        _row(name, _WHAT[name], sliced if name == "scapy" else segments, "segments", timing)
        for name, timing in timings.items()
    ]
    dpkt_rate, floor_rate = rows[1]["per_s"], rows[2]["per_s"]
    for row in rows:
        row["vs_dpkt"] = row["per_s"] / dpkt_rate
        row["vs_floor"] = row["per_s"] / floor_rate
    reader = rows[0]
    checks = [
        Check("reader segments/s", reader["per_s"], TARGET_RATE, unit=" seg/s", spec=",.0f"),
        Check("reader / dpkt", reader["vs_dpkt"], TARGET_VS_DPKT, unit="x", spec=".2f"),
        Check("reader / floor", reader["vs_floor"], TARGET_VS_FLOOR, unit="x", spec=".3f"),
    ]
    title = (
        f"{segments:,} TCP segments over {size.connections} connections "
        f"({stats['packets']:,} Cync packets), median of {opts.repeats}"
    )
    params = {
        **stats,
        "connections": size.connections,
        "file_bytes": pcap.stat().st_size,
        "scapy_segments": sliced,
        "repeats": opts.repeats,
        "dpkt": _version("dpkt"),
        "scapy": _version("scapy"),
    }
    notes = [f"text row skipped: {text['reason']}"] if text.get("status") == "skipped" else []
    if opts.quick:
        notes.append("quick size: fixed costs weigh more; judge targets on a full run")
    result = SPEC.result(opts, title, [*rows, text], checks, params, notes)
    if opts.profile:
        log("import: profiling the reader once")
        result.add_profile(profile_by_file(lambda: read_capture(pcap)), "one read_capture")
    return result
