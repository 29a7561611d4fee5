# Plain-text rendering of conformance findings, shared by every front end.
#
# Strategy: pure string building over the DiffReport data (no I/O, no terminal codes), so the
# CLI (`cyncsim diff`, `cyncsim replay`) writes these lines to its output and a pytest replay
# item puts them in its failure message.  Packet bytes are shown as hex with the differing
# bytes in [brackets], cut to a window around the first of them; every finding names its flow
# and packet index so a reader can find it in the recorded session.
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime

from cyncsim.replay.conformance.report import KINDS, ConformanceFinding, DiffReport

__all__ = [
    "HEX_WINDOW",
    "format_hex",
    "format_ts",
    "render_failure",
    "render_findings",
]

HEX_WINDOW = 48  # bytes of a packet shown around its first differing byte


def format_hex(hex_text: str, offsets: tuple[int, ...], *, window: int = HEX_WINDOW) -> str:
    """Bytes as hex with the differing ones in [brackets], cut to a window around them."""
    if not hex_text:
        return "-"
    data = hex_text.split()
    marked = set(offsets)
    start = 0
    if len(data) > window:
        first = min(marked) if marked else 0
        start = max(0, min(first - window // 4, len(data) - window))
    end = min(len(data), start + window)
    parts = [f"[{b}]" if i in marked else b for i, b in enumerate(data[start:end], start)]
    text = " ".join(parts)
    if start:
        text = f"(byte {start}) .. " + text
    if end < len(data):
        text += f" .. ({len(data)} bytes)"
    return text


def format_ts(ts: float | None) -> str:
    """A capture timestamp as UTC ISO time with microseconds, ``-`` when unknown."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _finding_lines(f: ConformanceFinding) -> list[str]:
    where = f"{f.flow} packet {f.index}" if f.index is not None else f.flow
    lines = [f"  {where} at {format_ts(f.ts)}: {f.message}"]
    if f.expected or f.actual:
        lines.append(f"    expected:  {f.expected}")
        lines.append(f"    actual:    {f.actual}")
    if f.packet_hex:
        lines.append(f"    packet:    {format_hex(f.packet_hex, f.offsets)}")
    if f.example_hex:
        lines.append(f"    reference: {format_hex(f.example_hex, f.offsets)}")
    return lines


def _grouped(
    findings: Iterable[ConformanceFinding], max_findings: int, more_hint: str
) -> list[str]:
    by_kind: dict[str, list[ConformanceFinding]] = defaultdict(list)
    for f in findings:
        by_kind[f.kind].append(f)
    lines: list[str] = []
    for kind, items in by_kind.items():
        sev = items[0].severity
        meaning = KINDS.get(kind, ("", ""))[1]
        lines.append(f"{kind} ({len(items)}, {sev}): {meaning}")
        for f in items[:max_findings]:
            lines.extend(_finding_lines(f))
        if len(items) > max_findings:
            hint = f" {more_hint}" if more_hint else ""
            lines.append(f"  ... {len(items) - max_findings} more{hint}")
    return lines


def render_findings(
    report: DiffReport, *, max_findings: int = 3, more_hint: str = "(all in --json)"
) -> str:
    """The findings section of `cyncsim diff`: per kind, its first ``max_findings`` findings.

    Ends with a newline; ``findings: none`` when the report has none.
    """
    if not report.findings:
        return "findings: none\n"
    lines = ["findings", *_grouped(report.findings, max_findings, more_hint)]
    return "\n".join(lines) + "\n"


def render_failure(report: DiffReport, *, max_findings: int = 3, more_hint: str = "") -> str:
    """An assertion-style message for a nonconformant report: the error findings first.

    The first line states the verdict and the counts per error kind; then, per kind, the
    first ``max_findings`` findings with their flow, packet index and marked bytes.  Warnings
    follow only as a count.  A conformant report renders as its one-line verdict.
    """
    errors = [f for f in report.findings if f.severity == "error"]
    warnings = sum(1 for f in report.findings if f.severity == "warning")
    if not errors:
        return f"replay {report.verdict}: no error findings ({warnings} warnings)\n"
    counts: dict[str, int] = {}
    for f in errors:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    lines = [f"replay {report.verdict}: {summary}"]
    lines.extend(_grouped(errors, max_findings, more_hint))
    if warnings:
        lines.append(f"(and {warnings} warnings)")
    return "\n".join(lines) + "\n"
