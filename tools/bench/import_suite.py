# `cyncsim bench import`: how fast captures are read, next to what others do with the file.
#
# Strategy: one generated pcap (replay.capture.pcapwrite.generate_benchmark_pcap: interleaved
# Cync connections with realistic exchanges) is read, in the same run, by
#   reader  read_capture(): file load, pcap walk, TCP reassembly, framing, decoding, flows
#   dpkt    dpkt.pcap.Reader, then dpkt.ethernet.Ethernet(frame).data.data.data per frame
#   floor   a struct loop over the pcap record headers and nothing else
#   scapy   rdpcap() on a slice holding the first segments (scapy is ~100x slower)
# and the MITM text reader reads the shared text captures.  Each speed is the median over
# the repeats, with its ratio to dpkt and to the floor.  Every measurement checks its result
# (segment, packet and byte counts) outside the clock, so a fast wrong answer fails the run.
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from cyncsim.replay.capture import accounting_errors, detect_format, read_capture
from cyncsim.replay.capture.model import CaptureResult
from cyncsim.replay.capture.pcapwrite import generate_benchmark_pcap
from cyncsim.replay.errors import CyncError
from cyncsim.tools.bench.common import (
    BenchOptions,
    Case,
    Check,
    Column,
    Log,
    SuiteResult,
    Timing,
    measure,
    measure_rounds,
    profile_by_file,
)

__all__ = [
    "TARGET_RATE",
    "TARGET_VS_DPKT",
    "TARGET_VS_FLOOR",
    "dpkt_parse",
    "pcap_slice",
    "run",
    "struct_floor",
    "text_row",
]

TARGET_RATE = 100_000.0  # segments per second, end to end
TARGET_VS_DPKT = 3.0
TARGET_VS_FLOOR = 0.4


@dataclass(frozen=True, slots=True)
class _Size:
    segments: int
    connections: int
    scapy_segments: int


FULL = _Size(200_000, 20, 20_000)
QUICK = _Size(20_000, 20, 2_000)

_LE_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
_BE_MAGICS = (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")

_WHAT = {
    "reader": "read_capture: reassembly + decode + flows",
    "dpkt": "pcap.Reader + Ethernet(...).data.data.data",
    "floor": "struct walk over the record headers",
    "scapy": "rdpcap on the first segments",
}
COLUMNS = [
    Column("name", "reader"),
    Column("what", "does"),
    Column("items", "items", ",d"),
    Column("unit", "unit"),
    Column("median_s", "median s", ".3f"),
    Column("per_s", "items/s", ",.0f"),
    Column("vs_dpkt", "vs dpkt", ".2f"),
    Column("vs_floor", "vs floor", ".3f"),
]


def _fail(message: str) -> CyncError:
    return CyncError(f"bench import: {message}", reason="bench")


def _record_header(buf: bytes) -> struct.Struct:
    if buf[:4] in _LE_MAGICS:
        return struct.Struct("<IIII")
    if buf[:4] in _BE_MAGICS:
        return struct.Struct(">IIII")
    raise _fail(f"not a classic pcap file (magic {buf[:4].hex()})")


def struct_floor(path: Path) -> int:
    """The floor: read the file and walk its record headers with struct; the record count."""
    buf = path.read_bytes()
    unpack = _record_header(buf).unpack_from
    n = len(buf)
    pos = 24
    count = 0
    while pos + 16 <= n:
        caplen = unpack(buf, pos)[2]
        pos += 16 + caplen
        count += 1
    return count


def pcap_slice(src: Path, dest: Path, records: int) -> int:
    """Write the first ``records`` records of pcap ``src`` to ``dest``; the count written."""
    buf = src.read_bytes()
    unpack = _record_header(buf).unpack_from
    pos = 24
    count = 0
    while count < records and pos + 16 <= len(buf):
        pos += 16 + unpack(buf, pos)[2]
        count += 1
    dest.write_bytes(buf[:pos])
    return count


def dpkt_parse(path: Path) -> tuple[int, int]:
    """dpkt's full parse down to the TCP payload: (frames, payload bytes)."""
    import dpkt

    frames = 0
    payload = 0
    with path.open("rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            data = dpkt.ethernet.Ethernet(frame).data.data.data
            frames += 1
            payload += len(data)
    return frames, payload


def _scapy_rdpcap() -> Any:
    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)  # no start-up chatter
    from scapy.utils import rdpcap

    return rdpcap


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
    """The MITM text reader on the shared text captures: packets per second.

    A missing folder or one without text captures gives a row marked ``skipped`` with the
    reason, never a made-up number.
    """
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

    def read_all() -> list[int]:
        return [read_capture(p).packet_count for p in files]

    def verify(counts: list[int]) -> None:
        if counts != expected:
            raise _fail(f"text reader gave {counts} packets, then {expected}")

    timing = measure(read_all, repeats, verify)
    names = ", ".join(p.name for p in files)
    what = f"read_capture on {len(files)} MITM text logs"
    return {
        **_row("text", what, sum(expected), "packets", timing),
        "status": "ok",
        "files": names,
        "bytes": sum(p.stat().st_size for p in files),
    }


def run(opts: BenchOptions, log: Log) -> SuiteResult:
    size = QUICK if opts.quick else FULL
    pcap = opts.workdir / "import-bench.pcap"
    log(f"import: generating a {size.segments:,}-segment pcap")
    stats = generate_benchmark_pcap(pcap, size.segments, size.connections, seed=0)
    segments = stats["segments"]
    first = read_capture(pcap)  # checked once in full, outside any clock
    _check_reader(first, stats, size.connections, full=True)
    del first

    part = opts.workdir / "import-bench-slice.pcap"
    sliced = pcap_slice(pcap, part, size.scapy_segments)
    rdpcap = _scapy_rdpcap()
    rdpcap(str(part), count=10)  # scapy builds some tables on its first use: not timed

    def check_reader(got: CaptureResult) -> None:
        _check_reader(got, stats, size.connections, full=False)

    def check_dpkt(got: tuple[int, int]) -> None:
        if got != (segments, stats["payload_bytes"]):
            want = (segments, stats["payload_bytes"])
            raise _fail(f"dpkt saw {got} (frames, payload bytes), expected {want}")

    def check_floor(got: int) -> None:
        if got != segments:
            raise _fail(f"the struct walk counted {got} records, expected {segments}")

    def check_scapy(got: int) -> None:
        if got != sliced:
            raise _fail(f"scapy read {got} packets of the {sliced}-segment slice")

    log(f"import: reader, dpkt, floor, scapy ({size.scapy_segments:,} segments), interleaved")
    cases: dict[str, Case] = {
        "reader": (lambda: read_capture(pcap), check_reader),
        "dpkt": (lambda: dpkt_parse(pcap), check_dpkt),
        "floor": (lambda: struct_floor(pcap), check_floor),
        "scapy": (lambda: len(rdpcap(str(part))), check_scapy),
    }
    timings = measure_rounds(cases, opts.repeats, log)

    log("import: MITM text reader")
    text = text_row(opts.captures, opts.repeats)

    seg = "segments"
    rows = [
        _row("reader", _WHAT["reader"], segments, seg, timings["reader"]),
        _row("dpkt", _WHAT["dpkt"], segments, seg, timings["dpkt"]),
        _row("floor", _WHAT["floor"], segments, seg, timings["floor"]),
        _row("scapy", _WHAT["scapy"], sliced, seg, timings["scapy"]),
    ]
    dpkt_rate, floor_rate = rows[1]["per_s"], rows[2]["per_s"]
    for row in rows:
        row["vs_dpkt"] = row["per_s"] / dpkt_rate
        row["vs_floor"] = row["per_s"] / floor_rate
    rows.append(text)
    rate = rows[0]["per_s"]
    checks = [
        Check("reader segments/s", rate, TARGET_RATE, unit=" seg/s", spec=",.0f"),
        Check("reader / dpkt", rows[0]["vs_dpkt"], TARGET_VS_DPKT, unit="x", spec=".2f"),
        Check("reader / floor", rows[0]["vs_floor"], TARGET_VS_FLOOR, unit="x", spec=".3f"),
    ]
    result = SuiteResult(
        suite="import",
        title=(
            f"{segments:,} TCP segments over {size.connections} connections "
            f"({stats['packets']:,} Cync packets), median of {opts.repeats}"
        ),
        columns=COLUMNS,
        rows=rows,
        checks=checks,
        quick=opts.quick,
        params={
            **stats,
            "connections": size.connections,
            "file_bytes": pcap.stat().st_size,
            "scapy_segments": sliced,
            "repeats": opts.repeats,
            "dpkt": _version("dpkt"),
            "scapy": _version("scapy"),
        },
    )
    if text.get("status") == "skipped":
        result.notes.append(f"text row skipped: {text['reason']}")
    if opts.quick:
        result.notes.append("quick size: fixed costs weigh more; judge targets on a full run")
    if opts.profile:
        log("import: profiling the reader once")
        _add_profile(result, pcap)
    return result


def _check_reader(
    result: CaptureResult, stats: dict[str, int], connections: int, *, full: bool
) -> None:
    """The reader found exactly what the generator wrote (``full``: byte accounting too)."""
    if result.packet_count != stats["packets"] or len(result.flows) != connections:
        raise _fail(
            f"the reader found {result.packet_count} packets in {len(result.flows)} flows, "
            f"the generator wrote {stats['packets']} in {connections}"
        )
    if result.findings:
        first = result.findings[0]
        raise _fail(
            f"the reader reported {len(result.findings)} findings on a clean capture, "
            f"first: {first.reason} {first.detail}"
        )
    if full:
        errors = accounting_errors(result)
        if errors:
            raise _fail(f"byte accounting does not add up: {errors[0]}")
        seen = sum(sum(f.bytes_seen.values()) for f in result.flows)
        if seen != stats["payload_bytes"]:
            raise _fail(f"the reader saw {seen} payload bytes, expected {stats['payload_bytes']}")


def _add_profile(result: SuiteResult, pcap: Path) -> None:
    prof = profile_by_file(lambda: read_capture(pcap))
    result.sections.append(
        (
            "profile of one read_capture (cProfile; shares of own time)",
            [Column("file", "file"), Column("own_share", "share", ".1%")],
            prof["files"],
        )
    )
    result.sections.append(
        (
            "top functions by own time",
            [
                Column("function", "function"),
                Column("calls", "calls", ",d"),
                Column("own_share", "own", ".1%"),
                Column("cum_share", "cumulative", ".1%"),
            ],
            prof["functions"],
        )
    )
