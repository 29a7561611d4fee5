# docs/performance.md from one `cyncsim bench all --json FILE` run: tables, checks, notes, plots.
#
# Strategy: the blocks between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` (a suite,
# or ``summary``) are rewritten from the JSON with each suite's SPEC columns, the prose around
# them kept, a missing block appended.  Plots need matplotlib (the `cyncsim[report]` extra).
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cyncsim.replay.errors import CyncError
from cyncsim.tools._extras import require
from cyncsim.tools.bench import common
from cyncsim.tools.bench.common import SUITES, Column, check_rows, format_table, load_suite

__all__ = ["DEFAULT_COMMAND", "PLOTS", "main", "plot_all", "render_block", "update_document"]

DEFAULT_COMMAND = "cyncsim bench all --profile --json docs/bench.json"
_BLOCK = re.compile(
    r"(<!-- bench:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S
)
Suite = Mapping[str, Any]


def _columns(name: str, title: str | None, rows: Sequence[Mapping[str, Any]]) -> list[Column]:
    """The SPEC's columns of the suite's table (``title`` None) or an extra table, else a
    profile's, else one per scalar key of the rows."""
    spec = getattr(load_suite(name), "SPEC", None) if name in SUITES else None
    cols = None if spec is None else spec.columns if title is None else spec.details.get(title)
    if cols:
        return list(cols)
    if title is not None and rows and ("function" in rows[0] or "file" in rows[0]):
        return common.PROFILE_COLUMNS["functions" if "function" in rows[0] else "files"]
    keys = dict.fromkeys(
        k for row in rows for k, v in row.items() if not isinstance(v, list | dict)
    )
    return [Column(k, k, ".1%" if k.endswith("share") else ",.4g") for k in keys]


def _num(value: Any, _: str = "") -> str:
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            return f"{value:.4g}"
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def render_block(suite: Suite, image: str | None, command: str) -> str:
    name, quick = suite["suite"], " (**quick size**)" if suite.get("quick") else ""
    parts = [
        f"*{suite.get('title', '')}*",
        f"Run: `{command}`, {suite.get('date', '?')}{quick}.",
        format_table(_columns(name, None, suite["rows"]), suite["rows"], markdown=True),
    ]
    if checks := suite.get("checks", []):
        parts.append(format_table(common.CHECK_COLUMNS, check_rows(checks, _num), markdown=True))
    for title, rows in suite.get("details", {}).items():
        if rows:
            table = format_table(_columns(name, title, rows), rows, markdown=True)
            parts.append(f"**{title}**\n\n{table}")
    if notes := suite.get("notes", []):
        parts.append("\n".join(f"- {n}" for n in notes))
    if image is not None:
        parts.append(f"![{name}]({image})")
    return "\n\n".join(parts) + "\n"


def render_summary(bench: Mapping[str, Any], command: str) -> str:
    m, suites = bench.get("machine", {}), bench.get("suites", [])
    dates = [s["date"] for s in suites if s.get("date")] or ["?"]
    rows = [
        {
            "suite": s["suite"],
            "targets": f"{sum(1 for c in s['checks'] if c['passed'])} of {len(s['checks'])} met",
            "passed": s.get("passed"),
            "title": s.get("title", ""),
        }
        for s in suites
    ]
    cols = [Column("suite", "suite"), Column("targets", "targets"), Column("passed", "all met")]
    table = format_table([*cols, Column("title", "what was measured")], rows, markdown=True)
    machine = (
        f"{m.get('cpus_usable', m.get('cpu_count', '?'))} usable CPUs ({m.get('cpu_model', '?')}), "
        f"{m.get('memory_mb', 0) / 1024:.0f} GB, {m.get('implementation', 'Python')} "
        f"{m.get('python', '?')}, {m.get('platform', '?')}; load average at the start "
        f"{', '.join(str(x) for x in m.get('load_average', []))}"
    )
    quick = " (**quick size**)" if any(s.get("quick") for s in suites) else ""
    return (
        f"**Command:** `{command}`{quick}  \n**Date:** {dates[0]} to {dates[-1]} (UTC)  \n"
        f"**Machine:** {machine}\n\n{table}\n"
    )


def update_document(text: str, blocks: Mapping[str, str]) -> str:
    """``text`` with every generated block replaced; missing suite blocks appended."""
    seen: set[str] = set()

    def swap(m: re.Match[str]) -> str:
        if (name := m.group("name")) not in blocks:
            return m.group(0)
        seen.add(name)
        return f"{m.group(1)}{blocks[name]}{m.group(4)}"

    out = _BLOCK.sub(swap, text)
    for name, body in blocks.items():
        if name not in seen:
            out = out.rstrip("\n") + f"\n\n## {name}\n\n<!-- bench:{name} -->\n{body}"
            out += f"<!-- /bench:{name} -->\n"
    return out


def _pyplot() -> Any:
    require("matplotlib", "the bench report's plots").use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axes(
    ax: Any, title: str, xlabel: str, ylabel: str, legend: int = 0, grid: str = "both"
) -> None:  # a legend in font size ``legend`` (0: none)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis=grid)
    if legend:
        ax.legend(fontsize=legend, loc="lower right" if ylabel == "CDF" else "best")


def _cdf(ax: Any, learned: Sequence[float], label: str) -> None:
    """The learned distribution's CDF, as the simulator samples it (piecewise linear)."""
    xs = sorted(learned) if len(learned) > 1 else [learned[0]] * 2
    ax.plot(xs, [i / (len(xs) - 1) for i in range(len(xs))], color="black", lw=2, label=label)


def _ecdf(ax: Any, samples: Sequence[float], colour: str, label: str, lw: float = 1.0) -> None:
    ys = [(i + 1) / len(samples) for i in range(len(samples))]
    ax.step(sorted(samples), ys, where="post", color=colour, lw=lw, label=label)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_acks(suite: Suite, out: Path) -> Path:
    names = list(dict.fromkeys(r["name"] for r in suite["rows"]))
    lines = (len(names) + 2) // 3
    fig, axes = _pyplot().subplots(lines, 3, figsize=(12.6, 3.2 * lines), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        rows = [r for r in suite["rows"] if r["name"] == name]
        learned = rows[0]["learned_ms"]
        _cdf(ax, learned, "learned (sampled)")
        for r, colour in zip(rows, ("tab:red", "tab:blue"), strict=False):
            _ecdf(ax, r["samples_ms"], colour, f"{r['loop']} loop, KS {r['ks']:.3f}")
        lo, hi = min(learned), max(learned)
        ax.set_xlim(max(0.0, lo - 0.05 * (hi - lo) - 1), hi + 0.05 * (hi - lo) + 1)
        _axes(ax, name, "ms", "CDF", legend=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.suptitle("answer time at the socket vs the learned distribution (time_scale 1.0)")
    return _save(fig, out / "acks-cdf.png")


def plot_baseline(suite: Suite, out: Path) -> Path:
    rows = [r for r in suite["rows"] if r.get("learned_ms")]
    fig, axes = _pyplot().subplots(1, len(rows), figsize=(5.5 * len(rows), 3.6), squeeze=False)
    for ax, r in zip(axes.flat, rows, strict=True):
        _cdf(ax, r["learned_ms"], "learned 0x7B")
        _ecdf(ax, r["samples_ms"], "tab:red", "measured (ReliableTransport)", lw=1.5)
        ax.axvline(800, color="tab:gray", ls="--", lw=1, label="target p99 800 ms")
        ax.axhline(0.99, color="tab:gray", ls=":", lw=1)
        title = f"{r['name']} ({r['request']}), {r['commands']:,} commands"
        _axes(ax, title, "ms", "CDF", legend=7)
    return _save(fig, out / "baseline-cdf.png")


def plot_chaos(suite: Suite, out: Path) -> Path:
    rows = suite["rows"]
    fig, ax = _pyplot().subplots(figsize=(10, 4.2))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["p50_ms"] or 0 for r in rows], width=0.4, label="p50")
    colours = [{True: "tab:green", False: "tab:red"}.get(r.get("passed"), "tab:gray") for r in rows]
    p99 = [r["p99_ms"] or 0 for r in rows]
    ax.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99 (green: row passed)", color=colours)
    ax.axhline(800, color="black", ls=":", lw=1, label="p99 target, baseline (800 ms)")
    ax.axhline(1500, color="black", ls="--", lw=1, label="p99 target, chaos (1,500 ms)")
    ax.set_xticks(list(xs), [r["name"] for r in rows], rotation=30, ha="right", fontsize=8)
    _axes(ax, "chaos matrix: latency of acknowledged toggles per row", "", "ms", 8, "y")
    return _save(fig, out / "chaos-p99.png")


def plot_overhead(suite: Suite, out: Path) -> Path:
    one = [r for r in suite["rows"] if r.get("connections") == 1]
    many = [r for r in suite["rows"] if (r.get("connections") or 0) > 1]
    fig, (a, b) = _pyplot().subplots(1, 2, figsize=(10, 3.6))
    a.bar([r["name"] for r in one], [r["p50_us"] for r in one], color="tab:blue")
    _axes(a, "p50 round trip, 1 connection", "", "us", grid="y")
    b.bar([r["name"] for r in many], [r["per_s"] for r in many], color="tab:orange")
    conns = many[0]["connections"] if many else 0
    _axes(b, f"throughput, {conns} connections", "", "round trips / s", grid="y")
    return _save(fig, out / "overhead.png")


def plot_fleet(suite: Suite, out: Path) -> Path:
    scale = suite["params"]["time_scale"]
    one = [r for r in suite["rows"] if r.get("engine", "process") == "process"]
    rows = [r for r in one if r["time_scale"] == scale]
    real = [r for r in one if r["time_scale"] == 1]
    fig, (a, b) = _pyplot().subplots(1, 2, figsize=(10, 3.6))
    n = [r["devices"] for r in rows]
    a.plot(n, [r["kib_per_device"] for r in rows], "o-", color="tab:blue")
    a.set_ylim(bottom=0)
    _axes(a, "memory per device", "devices in one process", "KiB per device (RSS delta / n)")
    for key in ("p50", "p99"):
        label = f"{key}, time_scale {scale:g}"
        b.plot(n, [r[f"hb_err_{key}_ms"] for r in rows], "o-", label=label)
    if real and scale != 1.0:
        m, p99 = [r["devices"] for r in real], [r["hb_err_p99_ms"] for r in real]
        b.plot(m, p99, "s", color="tab:green", label="p99, real cadence")
    b.axhline(50, color="black", ls="--", lw=1, label="target p99 50 ms")
    _axes(b, "heartbeat timing error", "devices in one process", "ms", legend=8)
    return _save(fig, out / "fleet.png")


PLOTS: dict[str, Callable[[Suite, Path], Path]] = {
    "baseline": plot_baseline,
    "acks": plot_acks,
    "chaos": plot_chaos,
    "overhead": plot_overhead,
    "fleet": plot_fleet,
}


def plot_all(bench: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """Every plot whose suite is in ``bench`` (the `bench all` JSON), written to ``out``."""
    suites = [s for s in bench.get("suites", []) if s.get("suite") in PLOTS and s.get("rows")]
    return {s["suite"]: PLOTS[s["suite"]](s, out) for s in suites}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cyncsim.tools.bench.report", description=__doc__)
    p.add_argument("json", type=Path, help="the JSON of `cyncsim bench all --json FILE`")
    p.add_argument("--doc", type=Path, default=Path("docs/performance.md"))
    p.add_argument("--img", type=Path, default=Path("docs/img"))
    p.add_argument("--command", default=DEFAULT_COMMAND, help="the command shown as the source")
    args = p.parse_args(argv)
    bench = json.loads(args.json.read_text(encoding="utf-8"))
    if "suites" not in bench:
        print(f"{args.json}: not the JSON of `cyncsim bench all`", file=sys.stderr)
        return 2
    try:
        images = plot_all(bench, args.img)
    except CyncError as exc:  # a missing extra: one line
        print(f"bench report: error: {exc}", file=sys.stderr)
        return 2
    blocks = {"summary": render_summary(bench, args.command)}
    doc_dir = args.doc.resolve().parent
    for suite in bench["suites"]:
        image = images[suite["suite"]].resolve() if suite["suite"] in images else None
        if image is not None and image.is_relative_to(doc_dir):
            image = image.relative_to(doc_dir)
        link = None if image is None else image.as_posix()
        blocks[suite["suite"]] = render_block(suite, link, args.command)
    text = args.doc.read_text(encoding="utf-8") if args.doc.is_file() else "# Performance\n"
    args.doc.write_text(update_document(text, blocks), encoding="utf-8")
    print(f"wrote {args.doc} ({len(blocks) - 1} suites) and {len(images)} plots in {args.img}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
