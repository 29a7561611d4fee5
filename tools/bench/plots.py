# Plots for docs/performance.md from the JSON of `cyncsim bench all` (the `cyncsim[report]`
# extra): answer-time CDFs against learned (acks, baseline), chaos p50/p99 against targets,
# round trips (overhead), memory and heartbeat error (fleet).  Each reads only its suite's JSON.
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cyncsim.tools._extras import require

__all__ = ["PLOTS", "plot_all"]

Suite = Mapping[str, Any]


def _pyplot() -> Any:
    require("matplotlib", "the bench report's plots").use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ecdf(samples: Sequence[float]) -> tuple[list[float], list[float]]:
    xs = sorted(samples)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def _learned_cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    vals = sorted(values)
    n = len(vals)
    if n == 1:
        return [vals[0], vals[0]], [0.0, 1.0]
    return vals, [i / (n - 1) for i in range(n)]


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_acks(suite: Suite, out: Path) -> Path:
    plt = _pyplot()
    names = list(dict.fromkeys(r["name"] for r in suite["rows"]))
    cols = 3
    rows_n = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        rows = [r for r in suite["rows"] if r["name"] == name]
        learned = rows[0]["learned_ms"]
        ax.plot(*_learned_cdf(learned), color="black", lw=2, label="learned (sampled)")
        for r, colour in zip(rows, ("tab:red", "tab:blue"), strict=False):
            xs, ys = _ecdf(r["samples_ms"])
            ax.step(
                xs,
                ys,
                where="post",
                color=colour,
                lw=1,
                label=f"{r['loop']} loop, KS {r['ks']:.3f}",
            )
        hi = max(learned)
        lo = min(learned)
        ax.set_xlim(max(0.0, lo - 0.05 * (hi - lo) - 1), hi + 0.05 * (hi - lo) + 1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("ms")
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.suptitle("answer time at the socket vs the learned distribution (time_scale 1.0)")
    return _save(fig, out / "acks-cdf.png")


def plot_baseline(suite: Suite, out: Path) -> Path:
    plt = _pyplot()
    rows = [r for r in suite["rows"] if r.get("learned_ms")]
    fig, axes = plt.subplots(1, len(rows), figsize=(5.5 * len(rows), 3.6), squeeze=False)
    for ax, r in zip(axes.flat, rows, strict=True):
        ax.plot(*_learned_cdf(r["learned_ms"]), color="black", lw=2, label="learned 0x7B")
        xs, ys = _ecdf(r["samples_ms"])
        ax.step(xs, ys, where="post", color="tab:red", label="measured (ReliableTransport)")
        ax.axvline(800, color="tab:gray", ls="--", lw=1, label="target p99 800 ms")
        ax.axhline(0.99, color="tab:gray", ls=":", lw=1)
        ax.set_title(f"{r['name']} ({r['request']}), {r['commands']:,} commands", fontsize=10)
        ax.set_xlabel("ms")
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out / "baseline-cdf.png")


def plot_chaos(suite: Suite, out: Path) -> Path:
    plt = _pyplot()
    rows = suite["rows"]
    names = [r["name"] for r in rows]
    p50 = [r["p50_ms"] or 0 for r in rows]
    p99 = [r["p99_ms"] or 0 for r in rows]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50", color="tab:blue")
    colours = [
        "tab:green" if r.get("passed") else ("tab:red" if r.get("passed") is False else "tab:gray")
        for r in rows
    ]
    ax.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99 (green: row passed)", color=colours)
    ax.axhline(800, color="black", ls=":", lw=1, label="p99 target, baseline (800 ms)")
    ax.axhline(1500, color="black", ls="--", lw=1, label="p99 target, chaos (1,500 ms)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title("chaos matrix: latency of acknowledged toggles per row")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, out / "chaos-p99.png")


def plot_overhead(suite: Suite, out: Path) -> Path:
    plt = _pyplot()
    one = [r for r in suite["rows"] if r.get("connections") == 1]
    many = [r for r in suite["rows"] if (r.get("connections") or 0) > 1]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.bar([r["name"] for r in one], [r["p50_us"] for r in one], color="tab:blue")
    a.set_ylabel("us")
    a.set_title("p50 round trip, 1 connection")
    b.bar([r["name"] for r in many], [r["per_s"] for r in many], color="tab:orange")
    b.set_ylabel("round trips / s")
    conns = many[0]["connections"] if many else 0
    b.set_title(f"throughput, {conns} connections")
    for ax in (a, b):
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, out / "overhead.png")


def plot_fleet(suite: Suite, out: Path) -> Path:
    plt = _pyplot()
    scale = suite["params"]["time_scale"]
    rows = [r for r in suite["rows"] if not r.get("workers") and r["time_scale"] == scale]
    real = [r for r in suite["rows"] if not r.get("workers") and r["time_scale"] == 1.0]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    n = [r["devices"] for r in rows]
    a.plot(n, [r["kib_per_device"] for r in rows], "o-", color="tab:blue")
    a.set_xlabel("devices in one process")
    a.set_ylabel("KiB per device (RSS delta / n)")
    a.set_ylim(bottom=0)
    a.set_title("memory per device")
    b.plot(n, [r["hb_err_p50_ms"] for r in rows], "o-", label=f"p50, time_scale {scale:g}")
    b.plot(n, [r["hb_err_p99_ms"] for r in rows], "o-", label=f"p99, time_scale {scale:g}")
    if real and scale != 1.0:
        m = [r["devices"] for r in real]
        b.plot(
            m, [r["hb_err_p99_ms"] for r in real], "s", color="tab:green", label="p99, real cadence"
        )
    b.axhline(50, color="black", ls="--", lw=1, label="target p99 50 ms")
    b.set_xlabel("devices in one process")
    b.set_ylabel("ms")
    b.set_title("heartbeat timing error")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.grid(alpha=0.3)
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
    made: dict[str, Path] = {}
    for suite in bench.get("suites", []):
        plot = PLOTS.get(suite.get("suite", ""))
        if plot is not None and suite.get("rows"):
            made[suite["suite"]] = plot(suite, out)
    return made
