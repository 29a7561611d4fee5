# `cyncsim serve --metrics HOST:PORT`: the run's stats as Prometheus metrics, on loopback.
#
# Strategy: a custom collector turns the latest merged RunStats (of one process, its
# --workers or its Ray shards: the same replay.stats merge) into metric families at each
# scrape: counters for connections, packets, commands, answers and faults (by kind), gauges
# for devices, and one histogram of answer latency per request kind whose cumulative
# buckets come from the mergeable LatencyHistogram (exact _count and _sum; each `le` bucket
# to the histogram's 2 % resolution).  prometheus-client (the `metrics` extra) is imported
# only when --metrics is given; its HTTP server runs in its own daemon thread with a
# registry of ours alone (a wsgiref server polling every POLL_S, so it stops at once), and
# reads a snapshot the serve loop replaces as it refreshes.
from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cyncsim.replay.stats import RunStats
from cyncsim.tools._extras import require

__all__ = ["LATENCY_BUCKETS", "POLL_S", "MetricsServer", "metric_families"]

POLL_S = 0.05  # the HTTP thread checks this often whether it is to stop

# upper bounds (seconds) of the exported latency buckets, +Inf added
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


def metric_families(stats: RunStats) -> Iterator[Any]:
    """The Prometheus metric families of ``stats`` (prometheus_client.core objects)."""
    core = require("prometheus_client.core", "--metrics")
    gauge, counter = core.GaugeMetricFamily, core.CounterMetricFamily
    yield gauge("cyncsim_devices", "Simulated devices in the run", value=stats.devices)
    yield gauge("cyncsim_devices_connected", "Devices connected now", value=stats.connected)
    yield counter("cyncsim_connections", "Connections made", value=stats.connections)
    yield counter(
        "cyncsim_connect_failures", "Dial attempts that failed", value=stats.connect_failures
    )
    packets = counter(
        "cyncsim_packets", "Packets the devices read (in) and wrote (out)", labels=["direction"]
    )
    packets.add_metric(["in"], stats.packets_in)
    packets.add_metric(["out"], stats.packets_out)
    yield packets
    yield counter("cyncsim_commands", "Data packets (0x73) received", value=stats.commands)
    yield counter("cyncsim_answers", "Packets sent in answer to a request", value=stats.answers)
    faults = counter("cyncsim_faults", "Chaos faults injected, by kind", labels=["kind"])
    for kind, n in sorted(stats.faults.items()):
        faults.add_metric([kind], n)
    yield faults
    latency = core.HistogramMetricFamily(
        "cyncsim_answer_latency_seconds",
        "From a request's arrival to its first answer, by request kind",
        labels=["request"],
    )
    for kind, h in sorted(stats.latency.items()):
        buckets = [(f"{le:g}", h.count_le(le)) for le in LATENCY_BUCKETS]
        buckets.append(("+Inf", h.count))
        latency.add_metric([kind], buckets, sum_value=h.sum)
    yield latency


class _Collector:
    """A prometheus_client collector over whatever ``latest()`` returns at scrape time."""

    def __init__(self, latest: Callable[[], RunStats]) -> None:
        self.latest = latest

    def collect(self) -> Iterator[Any]:
        return metric_families(self.latest())

    def describe(self) -> list[Any]:
        return []  # metric names are only known at collect time; no check at register


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per request on stderr."""


class MetricsServer:
    """Serves ``latest()`` as Prometheus text at http://HOST:PORT/metrics (port 0: any free
    port; ``port`` is the real one once started).  ``close()`` is safe twice."""

    def __init__(self, host: str, port: int, latest: Callable[[], RunStats]) -> None:
        self.host = host
        self.port = port
        self.latest = latest
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        client = require("prometheus_client", "--metrics")
        registry = client.CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self.latest))
        server_class = _Server6 if ":" in self.host else _Server
        app = client.make_wsgi_app(registry)
        httpd: WSGIServer = make_server(self.host, self.port, app, server_class, _QuietHandler)
        self.port = int(httpd.server_port)
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(POLL_S,), name="cyncsim-metrics", daemon=True
        )
        self._thread.start()
        self._httpd = httpd

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving (within POLL_S) and release the port."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
