# `cyncsim serve`'s live view of a long run: a status line on a terminal, and --metrics.
#
# Strategy: one task refreshes the run's merged RunStats once a second (from this process,
# from every --workers process, or from every Ray shard, through the runner's own
# refresh_stats) and hands the snapshot to both views.  The status line is rendered from
# two successive snapshots (render_status: rates are their differences over the time
# between them) and drawn with rich's Live, transient, so it is gone before the one-line
# summary; it is drawn only when the output is a terminal, so a pipe or a test sees exactly
# the lines it always saw.  --metrics starts a loopback Prometheus endpoint (tools/_metrics)
# that serves the latest snapshot and prints its URL as one line.
from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol, TextIO

from cyncsim.replay.errors import CyncError
from cyncsim.replay.stats import RunStats
from cyncsim.simulator.ports import check_loopback

__all__ = [
    "REFRESH_S",
    "StatsSource",
    "add_live_options",
    "check_live",
    "live_view",
    "parse_metrics_address",
    "render_status",
]

REFRESH_S = 1.0  # how often the stats are refreshed (and the line redrawn)


class StatsSource(Protocol):
    """A runner: CyncFleet, FleetWorkers or RayFleet (the latter two also refresh_stats)."""

    def stats(self) -> RunStats: ...


def add_live_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics, loopback only (port 0: "
        "any free port; needs cyncsim[metrics])",
    )


def check_live(args: argparse.Namespace) -> None:
    """The live options' problems as one usage line."""
    if args.metrics is None:
        return
    if args.cloud:
        raise CyncError("--metrics is for devices, not --cloud", reason="usage")
    parse_metrics_address(args.metrics)


def parse_metrics_address(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT (port 0: any free one), loopback only."""
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise CyncError(
            f"--metrics {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464", reason="usage"
        )
    try:
        check_loopback(host)
    except CyncError as exc:
        raise CyncError(f"--metrics: {exc}", reason="usage") from None
    return host, int(port_text)


def _ms(seconds: float) -> str:
    if math.isnan(seconds):  # nothing answered yet
        return "-"
    return f"{seconds * 1000:.3g} ms" if seconds < 10 else f"{seconds:.3g} s"


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def render_status(
    now: RunStats, before: RunStats | None = None, dt: float = 0.0, elapsed: float = 0.0
) -> str:
    """The status line: devices connected, commands and answers per second (between the
    ``before`` and ``now`` snapshots, ``dt`` s apart), faults injected, answer p50/p99."""
    if before is not None and dt > 0:
        cmd_rate = (now.commands - before.commands) / dt
        ans_rate = (now.answers - before.answers) / dt
        rates = f"{cmd_rate:.1f} commands/s, {ans_rate:.1f} answers/s"
    else:
        rates = "- commands/s, - answers/s"
    lat = now.all_latency()
    p50, p99 = lat.quantile(0.5), lat.quantile(0.99)  # nan while nothing was answered
    return (
        f"{_clock(elapsed)}  {now.connected}/{now.devices} connected, {rates}, "
        f"{now.faults_total} faults, answer p50 {_ms(p50)} p99 {_ms(p99)}"
    )


async def _refresh(runner: StatsSource) -> RunStats:
    refresh = getattr(runner, "refresh_stats", None)
    if refresh is not None:
        stats: RunStats = await refresh()
        return stats
    return runner.stats()


@contextlib.asynccontextmanager
async def live_view(
    runner: StatsSource,
    out: TextIO,
    *,
    metrics: str | None = None,
    live: bool | None = None,
    prog: str = "cyncsim serve",
    interval: float = REFRESH_S,
) -> AsyncIterator[None]:
    """While inside: a status line on ``out`` when it is a terminal (``live``: force it on or
    off) and, with ``metrics`` (HOST:PORT), a Prometheus endpoint there (its URL printed
    first)."""
    show = out.isatty() if live is None else live
    snapshot: list[RunStats] = [runner.stats()]
    server = None
    if metrics is not None:
        from cyncsim.tools._metrics import MetricsServer

        server = MetricsServer(*parse_metrics_address(metrics), latest=lambda: snapshot[0])
        try:
            server.start()
        except OSError as exc:
            raise CyncError(f"--metrics {metrics}: cannot listen: {exc}", reason="usage") from None
        out.write(f"{prog}: metrics at {server.url}\n")
        out.flush()
    display: Any = None
    if show:
        from rich.console import Console
        from rich.live import Live

        console = Console(file=out, highlight=False)
        display = Live("", console=console, transient=True, auto_refresh=False)
        display.start()
    task = None
    if show or server is not None:
        task = asyncio.ensure_future(_loop(runner, snapshot, display, interval))
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if display is not None:
            display.stop()
        if server is not None:
            await asyncio.to_thread(server.close)


async def _loop(
    runner: StatsSource, snapshot: list[RunStats], display: Any, interval: float
) -> None:
    began = last_t = time.monotonic()
    last = snapshot[0]
    if display is not None:
        display.update(render_status(last), refresh=True)
    while True:
        await asyncio.sleep(interval)
        stats = await _refresh(runner)
        t = time.monotonic()
        snapshot[0] = stats
        if display is not None:
            display.update(render_status(stats, last, t - last_t, t - began), refresh=True)
        last, last_t = stats, t
