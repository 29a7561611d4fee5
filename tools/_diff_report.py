# The HTML report of `cyncsim diff --html`: one self-contained file.
#
# Strategy: plain HTML with inline CSS; every plot is a matplotlib figure (the object API,
# no pyplot state, Agg rendering) embedded as a base64 PNG data URI, so the file opens
# anywhere without network access.  Per timing row one plot: the empirical CDF of the
# reference (the model's stored samples or sketch) against the candidate's samples, latency
# on a log axis when it spans decades, plus the service-time CDFs when the verdict used them.
# A few lines of inline script mark each plot image with its decoded size once the page has
# loaded (data-rendered), so a headless browser's DOM dump shows the plots really rendered.
from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cyncsim.replay.conformance import ConformanceFinding, DiffReport, TimingRow
from cyncsim.replay.errors import CyncError

__all__ = [
    "MAX_ROWS_PER_KIND",
    "cdf_png",
    "render_html",
    "timing_plot_png",
    "write_html",
    "write_page",
]

MAX_ROWS_PER_KIND = 50  # findings listed per kind in the table (all are in --json)
_REF_COLOUR = "#1f77b4"
_CAND_COLOUR = "#d62728"

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px;
       color: #222; background: #fff; }
h1 { font-size: 24px; margin-bottom: 4px; }
h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ccc; }
.verdict { padding: 2px 10px; border-radius: 4px; color: #fff; }
.conformant { background: #2e7d32; } .nonconformant { background: #c62828; }
table { border-collapse: collapse; font-size: 12px; margin-top: 8px; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.fail td { background: #fdecea; } tr.insufficient td { color: #888; }
.error { color: #c62828; font-weight: bold; } .warning { color: #b26a00; }
.info { color: #555; }
.hex { font-family: Menlo, Consolas, monospace; font-size: 11px; word-break: break-all;
       max-width: 420px; }
mark { background: #ffd54f; padding: 0 1px; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; border: 1px solid #ddd; padding: 4px; background: #fafafa; }
figcaption { font-size: 12px; text-align: center; }
.meta { font-size: 13px; color: #444; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var n = 0;
  document.querySelectorAll("img.plot").forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) {
      img.setAttribute("data-rendered", img.naturalWidth + "x" + img.naturalHeight);
      n += 1;
    }
  });
  document.body.setAttribute("data-plots-rendered", String(n));
});
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ecdf(values: Sequence[float], scale: float) -> tuple[list[float], list[float]]:
    xs = [v * scale for v in values]
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def timing_plot_png(row: TimingRow) -> bytes:
    """The CDF plot of one timing row as PNG bytes."""
    from matplotlib.figure import Figure

    idle = row.basis == "idle"
    scale, unit = (1.0, "s") if idle else (1000.0, "ms")
    fig = Figure(figsize=(4.2, 3.0), dpi=90)
    ax = fig.subplots()
    what = "idle" if idle else "latency"
    curves = [
        (row.ref_values, _REF_COLOUR, "-", 2.4, f"reference {what} (n={row.ref_count})"),
        (row.cand_values, _CAND_COLOUR, "--", 1.4, f"candidate {what} (n={row.cand_count})"),
    ]
    if row.basis == "service":
        curves += [
            (row.ref_basis_values, _REF_COLOUR, ":", 1.6, "reference service time"),
            (row.cand_basis_values, _CAND_COLOUR, ":", 1.2, "candidate service time"),
        ]
    positive: list[float] = []
    for values, colour, style, width, label in curves:
        if not values:
            continue
        xs, ys = _ecdf(values, scale)
        ax.step(xs, ys, where="post", color=colour, linestyle=style, label=label, linewidth=width)
        if len(xs) <= 5:  # a step plot of one or two samples is hard to see
            ax.plot(xs, ys, "o", color=colour, markersize=4)
        positive += [x for x in xs if x > 0]
    verdict = row.verdict.upper() if row.verdict == "fail" else row.verdict
    xlabel = f"{'idle time' if idle else 'latency'} ({unit})"
    return cdf_png(fig, ax, positive, xlabel, f"{row.label} [{row.variant}] {verdict}")


def cdf_png(fig: Any, ax: Any, positive: Sequence[float], xlabel: str, title: str) -> bytes:
    """Finish a CDF plot the way every report draws one (log x when the positive values span
    more than 30x, shares 0-1, small labels, legend) and render it as PNG bytes."""
    if len(positive) and max(positive) / min(positive) > 30:
        ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("cumulative share", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _hex_html(hex_text: str, offsets: Sequence[int], limit: int = 96) -> str:
    if not hex_text:
        return ""
    data = hex_text.split()
    marked = set(offsets)
    start = 0
    if len(data) > limit and marked:
        start = max(0, min(min(marked) - limit // 4, len(data) - limit))
    parts = [
        f"<mark>{_esc(b)}</mark>" if i in marked else _esc(b)
        for i, b in enumerate(data[start : start + limit], start)
    ]
    text = " ".join(parts)
    if start:
        text = f"(byte {start}) &hellip; " + text
    if start + limit < len(data):
        text += f" &hellip; ({len(data)} bytes)"
    return text


def _hex_cell(hex_text: str, offsets: Sequence[int]) -> str:
    """The bytes around the finding, and the whole value behind a details element."""
    if not hex_text:
        return ""
    near = _hex_html(hex_text, offsets)
    whole = _hex_html(hex_text, offsets, limit=len(hex_text))
    if near == whole:
        return near
    return f"<details><summary>{near}</summary>{whole}</details>"


def _ts(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _q(row: TimingRow, q: dict[str, float]) -> str:
    scale = 1.0 if row.basis == "idle" else 1000.0
    return " / ".join(f"{q[k] * scale:.1f}" for k in ("p50", "p95", "p99")) if q else "-"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _timing_table(report: DiffReport) -> str:
    head = (
        "<tr><th>variant</th><th>request &rarr; response</th><th>answered by</th>"
        "<th>ref n</th><th>cand n</th><th>reference p50 / p95 / p99</th>"
        "<th>candidate p50 / p95 / p99</th><th>judged on</th><th>slack distance</th>"
        "<th>KS D</th><th>p-value</th><th>verdict</th><th>note</th></tr>"
    )
    rows = []
    for r in report.timing:
        unit = "s" if r.basis == "idle" else "ms"
        rows.append(
            f'<tr class="{_esc(r.verdict)}"><td>{_esc(r.variant)}</td><td>{_esc(r.label)}</td>'
            f"<td>{_esc(r.role)}</td><td class=num>{r.ref_count}</td>"
            f"<td class=num>{r.cand_count}</td><td class=num>{_q(r, r.ref)} {unit}</td>"
            f"<td class=num>{_q(r, r.cand)} {unit}</td><td>{_esc(r.basis)}</td>"
            f"<td class=num>{_num(r.distance, '.2f')}</td><td class=num>{_num(r.ks, '.2f')}</td>"
            f"<td class=num>{_num(r.p_value, '.2g')}</td><td>{_esc(r.verdict)}</td>"
            f"<td>{_esc(r.note)}</td></tr>"
        )
    return f'<table id="timing">{head}{"".join(rows)}</table>'


def _coverage_table(report: DiffReport) -> str:
    rows = "".join(
        f"<tr><td>{_esc(c.sender)}</td><td>{_esc(c.kind)}</td><td class=num>{c.reference}</td>"
        f"<td class=num>{c.candidate}</td><td>{_esc(c.status)}</td></tr>"
        for c in report.coverage
    )
    return (
        '<table id="coverage"><tr><th>sender</th><th>kind</th><th>in reference</th>'
        f"<th>in candidate</th><th>status</th></tr>{rows}</table>"
    )


def _findings_table(report: DiffReport) -> str:
    by_kind: dict[str, list[ConformanceFinding]] = defaultdict(list)
    for f in report.findings:
        by_kind[f.kind].append(f)
    head = (
        "<tr><th>kind</th><th>severity</th><th>flow</th><th>packet</th><th>time (UTC)</th>"
        "<th>what</th><th>expected</th><th>actual</th><th>packet bytes</th>"
        "<th>reference example</th></tr>"
    )
    rows = []
    for kind, items in by_kind.items():
        for f in items[:MAX_ROWS_PER_KIND]:
            rows.append(
                f'<tr class="finding"><td>{_esc(f.kind)}</td>'
                f'<td class="{_esc(f.severity)}">{_esc(f.severity)}</td><td>{_esc(f.flow)}</td>'
                f"<td class=num>{'' if f.index is None else f.index}</td><td>{_ts(f.ts)}</td>"
                f"<td>{_esc(f.message)}</td><td>{_esc(f.expected)}</td><td>{_esc(f.actual)}</td>"
                f'<td class="hex">{_hex_cell(f.packet_hex, f.offsets)}</td>'
                f'<td class="hex">{_hex_cell(f.example_hex, f.offsets)}</td></tr>'
            )
        if len(items) > MAX_ROWS_PER_KIND:
            rows.append(
                f'<tr><td colspan="10">{_esc(kind)}: {len(items) - MAX_ROWS_PER_KIND} more '
                "(all in <code>--json</code>)</td></tr>"
            )
    if not rows:
        return '<p id="findings">No findings.</p>'
    return f'<table id="findings">{head}{"".join(rows)}</table>'


def render_html(report: DiffReport) -> str:
    # Each kind with the severity its findings carry (a weak constant is a warning, say),
    # the same as in the findings table below.
    tally: dict[tuple[str, str], int] = defaultdict(int)
    for f in report.findings:
        tally[(f.kind, f.severity)] += 1
    summary = ", ".join(f"{kind}: {n} ({sev})" for (kind, sev), n in tally.items())
    judged: list[str] = []
    few: list[str] = []
    for row in report.timing:
        if not row.ref_values and not row.cand_values:
            continue
        png = base64.b64encode(timing_plot_png(row)).decode("ascii")
        (few if row.verdict == "insufficient" else judged).append(
            f'<figure><img class="plot" width="378" height="270" '
            f'alt="CDF {_esc(row.label)}" src="data:image/png;base64,{png}">'
            f"<figcaption>{_esc(row.label)} &middot; {_esc(row.verdict)}</figcaption></figure>"
        )
    tol = report.tolerance
    notes = "".join(f"<li>{_esc(n)}</li>" for n in report.notes)
    variants = "".join(
        f"<li>{_esc(Path(s).name)}: compared with the reference's <b>{_esc(v)}</b> variant</li>"
        for s, v in report.variants.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>cyncsim diff: {_esc(report.verdict)}</title>
<style>{_CSS}</style></head>
<body data-verdict="{_esc(report.verdict)}">
<h1>cyncsim conformance diff
<span class="verdict {_esc(report.verdict)}">{_esc(report.verdict.upper())}</span></h1>
<p class="meta">reference: {_esc(", ".join(Path(s).name for s in report.reference))}<br>
candidate: {_esc(", ".join(Path(s).name for s in report.candidate))}
({report.packets} packets)<br>
tolerance: fail when the slack KS distance &gt; {tol.ks} (slack &times;{1 + tol.rel:g})
and p &lt; {tol.alpha}; fewer than {tol.min_samples} samples a side is insufficient<br>
findings: {_esc(summary) or "none"}</p>
<ul class="meta">{variants}{notes}</ul>
<h2>Latency CDFs, reference vs candidate</h2>
<div class="plots" id="plots">{"".join(judged) or "<p>No kind had enough samples.</p>"}</div>
<h2>Timing per request kind</h2>
{_timing_table(report)}
<h2>Findings</h2>
{_findings_table(report)}
<h2>Coverage</h2>
{_coverage_table(report)}
<h2>CDFs of kinds with too few samples to judge</h2>
<div class="plots" id="plots-insufficient">{"".join(few) or "<p>None.</p>"}</div>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_html(report: DiffReport, path: str | Path) -> None:
    write_page(render_html(report), path)


def write_page(page: str, path: str | Path) -> None:
    """Write a rendered report page; an unwritable path is one CyncError naming it."""
    try:
        Path(path).write_text(page, encoding="utf-8")
    except OSError as exc:
        raise CyncError(
            f"{path}: cannot write the report: {exc.strerror}", reason="unwritable"
        ) from None
