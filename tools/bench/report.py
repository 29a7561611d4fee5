# docs/performance.md from one `cyncsim bench all --json FILE` run: tables, checks, notes, plots.
#
# Strategy: generated blocks between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` (a
# suite, or ``summary``) are rewritten from the JSON with each suite's SPEC columns; the prose
# around them is kept; a missing block is appended.
#   python -m cyncsim.tools.bench.report docs/bench.json --doc docs/performance.md --img docs/img
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cyncsim.replay.errors import CyncError
from cyncsim.tools.bench import SUITES, load_suite
from cyncsim.tools.bench.common import PROFILE_COLUMNS, Column, cell

__all__ = ["DEFAULT_COMMAND", "main", "markdown_table", "render_block", "update_document"]

DEFAULT_COMMAND = "cyncsim bench all --profile --json docs/bench.json"
_BLOCK = re.compile(
    r"(<!-- bench:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S
)


def _cell(value: Any, spec: str) -> str:
    return cell(value, spec).replace("|", "\\|")


def markdown_table(columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub table; numeric columns right-aligned; lists and dicts are left out."""
    head = "| " + " | ".join(c.header for c in columns) + " |"
    aligns = []
    for c in columns:
        numeric = any(
            isinstance(r.get(c.key), int | float) and not isinstance(r.get(c.key), bool)
            for r in rows
        )
        aligns.append("---:" if numeric else "---")
    lines = [head, "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(_cell(r.get(c.key), c.spec) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _columns(name: str, title: str | None, rows: Sequence[Mapping[str, Any]]) -> list[Column]:
    """The columns the suite declares (its SPEC) for its table (``title`` None) or for an
    extra table; a profile's by its rows; else every scalar key of the rows."""
    spec = getattr(load_suite(name), "SPEC", None) if name in SUITES else None
    if spec is not None:
        cols = spec.columns if title is None else spec.details.get(title)
        if cols:
            return list(cols)
    if title is not None and rows and ("function" in rows[0] or "file" in rows[0]):
        return PROFILE_COLUMNS["functions" if "function" in rows[0] else "files"]
    keys = dict.fromkeys(
        k for row in rows for k, v in row.items() if not isinstance(v, list | dict)
    )
    return [Column(k, k, ".1%" if k.endswith("share") else ",.4g") for k in keys]


def render_block(suite: Mapping[str, Any], image: str | None, command: str) -> str:
    """The generated markdown of one suite."""
    name = suite["suite"]
    parts = [
        f"*{suite.get('title', '')}*",
        f"Run: `{command}`, {suite.get('date', '?')}"
        + (" (**quick size**)" if suite.get("quick") else "")
        + ".",
        markdown_table(_columns(name, None, suite["rows"]), suite["rows"]),
    ]
    checks = suite.get("checks", [])
    if checks:
        rows = [
            {
                "target": f"{c['name']} {c['op']} {_num(c['target'])}{c['unit']}",
                "measured": f"{_num(c['value'])}{c['unit']}",
                "result": c["passed"],
            }
            for c in checks
        ]
        cols = [
            Column("target", "target"),
            Column("measured", "measured"),
            Column("result", "result"),
        ]
        parts.append(markdown_table(cols, rows))
    for title, rows in suite.get("details", {}).items():
        if rows:
            parts.append(f"**{title}**\n\n" + markdown_table(_columns(name, title, rows), rows))
    notes = suite.get("notes", [])
    if notes:
        parts.append("\n".join(f"- {n}" for n in notes))
    if image is not None:
        parts.append(f"![{name}]({image})")
    return "\n\n".join(parts) + "\n"


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            return f"{value:.4g}"
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def render_summary(bench: Mapping[str, Any], command: str) -> str:
    m = bench.get("machine", {})
    suites = bench.get("suites", [])
    dates = [s.get("date", "") for s in suites if s.get("date")]
    rows = []
    for s in suites:
        checks = s.get("checks", [])
        rows.append(
            {
                "suite": s["suite"],
                "targets": f"{sum(1 for c in checks if c['passed'])} of {len(checks)} met",
                "passed": s.get("passed"),
                "title": s.get("title", ""),
            }
        )
    cols = [
        Column("suite", "suite"),
        Column("targets", "targets"),
        Column("passed", "all met"),
        Column("title", "what was measured"),
    ]
    machine = (
        f"{m.get('cpus_usable', m.get('cpu_count', '?'))} usable CPUs ({m.get('cpu_model', '?')}), "
        f"{m.get('memory_mb', 0) / 1024:.0f} GB, {m.get('implementation', 'Python')} "
        f"{m.get('python', '?')}, {m.get('platform', '?')}; load average at the start "
        f"{', '.join(str(x) for x in m.get('load_average', []))}"
    )
    quick = any(s.get("quick") for s in suites)
    return (
        f"**Command:** `{command}`" + (" (**quick size**)" if quick else "") + "  \n"
        f"**Date:** {dates[0] if dates else '?'} to {dates[-1] if dates else '?'} (UTC)  \n"
        f"**Machine:** {machine}\n\n" + markdown_table(cols, rows) + "\n"
    )


def update_document(text: str, blocks: Mapping[str, str]) -> str:
    """``text`` with every generated block replaced; missing suite blocks appended."""
    seen: set[str] = set()

    def swap(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in blocks:
            return m.group(0)
        seen.add(name)
        return f"{m.group(1)}{blocks[name]}{m.group(4)}"

    out = _BLOCK.sub(swap, text)
    for name, body in blocks.items():
        if name not in seen:
            out = (
                out.rstrip("\n")
                + f"\n\n## {name}\n\n<!-- bench:{name} -->\n{body}<!-- /bench:{name} -->\n"
            )
    return out


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
    from cyncsim.tools.bench.plots import plot_all

    try:
        images = plot_all(bench, args.img)
    except CyncError as exc:  # a missing extra: one line
        print(f"bench report: error: {exc}", file=sys.stderr)
        return 2
    blocks = {"summary": render_summary(bench, args.command)}
    for suite in bench["suites"]:
        image = images.get(suite["suite"])
        rel = None
        if image is not None:
            try:
                rel = image.resolve().relative_to(args.doc.resolve().parent).as_posix()
            except ValueError:
                rel = image.resolve().as_posix()
        blocks[suite["suite"]] = render_block(suite, rel, args.command)
    text = args.doc.read_text(encoding="utf-8") if args.doc.is_file() else "# Performance\n"
    args.doc.write_text(update_document(text, blocks), encoding="utf-8")
    print(f"wrote {args.doc} ({len(blocks) - 1} suites) and {len(images)} plots in {args.img}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
