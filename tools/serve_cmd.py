# `cyncsim serve`: simulated devices on loopback, listening for a controller or dialling one.
#
# A thin front end over simulator.fleet: parse and check the options (every problem is one
# line and exit status 2), build the chaos config (a --chaos TOML/JSON profile, then each
# command-line chaos option on top of it), run a CyncFleet (or FleetWorkers with
# --workers), print one line per device, and stop on Ctrl-C, SIGTERM or --duration with a
# one-line summary and exit status 0; while it runs, tools/_live keeps a status line up to
# date on a terminal and serves --metrics (Prometheus).  Loopback only: --host and --connect must be
# 127.0.0.0/8, ::1 or localhost; this project never talks to another host.
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import signal
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TextIO

from cyncsim.replay.chaos import ChaosConfig
from cyncsim.replay.errors import CyncError
from cyncsim.replay.model import DeviceModel
from cyncsim.simulator.fleet import (
    MESH_NODES,
    CyncFleet,
    FleetWorkers,
    RayFleet,
    format_address,
    worker_record_path,
)
from cyncsim.simulator.ports import check_loopback
from cyncsim.tools._live import add_live_options, check_live, live_view
from cyncsim.tools._serve_engine import add_engine_options, check_engine

__all__ = ["build_chaos", "register", "run"]

logger = logging.getLogger("cyncsim.serve")
PROG = "cyncsim serve"


class _OneLineParser(argparse.ArgumentParser):
    """Reports a bad option as one line (no usage block) and exits with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\n")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,5,9") from None


def _setting(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. latency_ms=20)")
    try:
        value: Any = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value


# (option, ChaosConfig key path, type, metavar, help)
_Conv = Callable[[str], Any]
_CHAOS: list[tuple[str, str, _Conv, str, str]] = [
    ("--latency-ms", "latency_ms", float, "MS", "delay added to every packet"),
    ("--latency-variance", "latency_variance", float, "MS", "jitter (standard deviation)"),
    ("--loss", "packet_loss_rate", float, "RATE", "independent packet loss, 0..1"),
    ("--drop-pattern", "drop_pattern", _int_list, "N,N,...", "1-based packets to drop"),
    ("--duplicate", "duplicate_rate", float, "RATE", "packets sent twice"),
    ("--reorder", "reorder_rate", float, "RATE", "packets held back (overtaken)"),
    ("--reorder-delay-ms", "reorder_delay_ms", float, "MS", "how long they are held"),
    ("--corrupt", "corruption_rate", float, "RATE", "packets with flipped bytes"),
    ("--corrupt-bytes", "corruption_bytes", int, "N", "bytes flipped per corrupt packet"),
    ("--burst-p", "burst.p", float, "P", "Gilbert-Elliott P(good->bad)"),
    ("--burst-r", "burst.r", float, "R", "Gilbert-Elliott P(bad->good)"),
    ("--burst-loss-good", "burst.loss_good", float, "RATE", "loss in the good state"),
    ("--burst-loss-bad", "burst.loss_bad", float, "RATE", "loss in the bad state"),
    ("--slice", "slicing.rate", float, "RATE", "packets split over several writes"),
    ("--slice-max-pieces", "slicing.max_pieces", int, "N", "at most this many pieces"),
    ("--slice-delay-ms", "slicing.delay_ms", float, "MS", "gap between the pieces"),
    ("--stall", "stall.duration_s", float, "SECONDS", "stop reading for this long"),
    ("--stall-at", "stall.at_s", float, "SECONDS", "... starting this long after start"),
    ("--stall-after-packet", "stall.after_packet", int, "N", "... or after packet N"),
    ("--reset-after-packet", "reset.after_packet", int, "N", "close abruptly after packet N"),
    ("--reset-at", "reset.at_s", float, "SECONDS", "... or this long after start"),
    ("--reset-probability", "reset.probability", float, "RATE", "... or after any packet"),
    ("--reset-direction", "reset.direction", str, "DIR", "to_device or from_device only"),
    ("--partition-start", "partition.start_s", float, "SECONDS", "partition from then"),
    ("--partition-end", "partition.end_s", float, "SECONDS", "... until then"),
]
_PARTITION_MODES = {
    "both": (True, True),
    "refuse": (True, False),
    "blackhole": (False, True),
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser(
        "serve",
        help=help_text,
        description=(
            "Run simulated Cync devices built from a learned model.  Without --connect every "
            "device listens on its own port; with --connect they dial one controller, each "
            "from its own loopback address.  Loopback only (127.0.0.0/8, ::1, localhost). "
            "Ctrl-C or SIGTERM stops cleanly with a summary."
        ),
    )
    p.__class__ = _OneLineParser
    g = p.add_argument_group("devices")
    g.add_argument("--devices", type=int, default=1, metavar="N", help="how many (default 1)")
    g.add_argument("--model", metavar="FILE", help="model file (default: the shipped model)")
    g.add_argument("--seed", type=int, help="root seed (default: drawn and printed)")
    g.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="multiply every learned delay and cadence (default 1)",
    )
    g.add_argument(
        "--identities",
        choices=("model", "generate"),
        default="model",
        help="model: the model's captured devices first (default); generate: all new",
    )
    g.add_argument(
        "--mesh-size",
        type=int,
        default=MESH_NODES,
        metavar="N",
        help=f"devices per mesh (node ids 1..254; default {MESH_NODES})",
    )
    g.add_argument("--firmware", metavar="VERSION", help="device firmware digits, e.g. 10052")
    g.add_argument("--variant", help="model variant to follow (default: cloud)")
    g.add_argument("--record", metavar="FILE", help="record all traffic (pcapng, .txt: text)")
    g.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="split the devices over N processes (--record: FILE.wK.SUFFIX each)",
    )
    g.add_argument(
        "--concurrency",
        type=int,
        default=256,
        metavar="N",
        help="devices starting or dialling at once (default 256)",
    )
    n = p.add_argument_group("network (loopback only)")
    n.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    n.add_argument(
        "--port",
        type=int,
        default=0,
        help="port of the first device, the next ones follow (default: free ports)",
    )
    n.add_argument(
        "--spread",
        action="store_true",
        help="listen on one loopback address per device (127.0.0.2, ...) instead of --host; "
        "faster for thousands of devices",
    )
    n.add_argument("--connect", metavar="HOST:PORT", help="dial this controller instead")
    n.add_argument(
        "--cloud",
        action="store_true",
        help="run the learned cloud/server side (CyncCloudSimulator) listening on --host:--port "
        "instead of devices: for devices, or `cyncsim replay`, to dial",
    )
    n.add_argument("--tls", action="store_true", help="dial with TLS (old firmware suites)")
    n.add_argument("--verify", action="store_true", help="check the controller's certificate")
    n.add_argument("--cafile", metavar="FILE", help="CA certificates for --verify")
    n.add_argument("--server-name", metavar="NAME", help="TLS server name (SNI, --verify)")
    n.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up when a device has no connection by then (default 10)",
    )
    n.add_argument(
        "--no-source-hosts",
        action="store_true",
        help="dial from 127.0.0.1 (default: each device from 127.0.0.2, .3, ...)",
    )
    add_engine_options(p)
    r = p.add_argument_group("run")
    r.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    r.add_argument("--quiet", action="store_true", help="no line per device")
    r.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    add_live_options(r)
    c = p.add_argument_group("chaos (override the --chaos profile; field names in brackets)")
    c.add_argument("--chaos", metavar="FILE", help="chaos profile, TOML or JSON")
    for opt, key, conv, metavar, text in _CHAOS:
        c.add_argument(opt, type=conv, metavar=metavar, dest=_dest(key), help=f"{text} [{key}]")
    c.add_argument(
        "--partition-mode",
        choices=sorted(_PARTITION_MODES),
        help="refuse connections, black-hole packets, or both [partition.*]",
    )
    for way in ("to-device", "from-device"):
        c.add_argument(
            f"--{way}",
            type=_setting,
            action="append",
            metavar="KEY=VALUE",
            help=f"per-packet setting for {way.replace('-', '_')} only (repeat)",
        )
    p.set_defaults(func=run)


def _dest(key: str) -> str:
    return "chaos__" + key.replace(".", "__")


# ------------------------------------------------------------------------------- checks
def _fail(message: str) -> NoReturn:
    raise CyncError(message, reason="usage")


def _check(args: argparse.Namespace) -> None:
    if args.devices < 1:
        _fail(f"--devices {args.devices}: need at least 1")
    if not 1 <= args.workers <= args.devices:
        _fail(f"--workers {args.workers}: need 1..{args.devices} (at most one per device)")
    if not (args.time_scale >= 0 and args.time_scale < float("inf")):
        _fail(f"--time-scale {args.time_scale}: need a finite number >= 0")
    if args.duration is not None and not args.duration > 0:
        _fail(f"--duration {args.duration}: need a number of seconds > 0")
    if not args.connect_timeout > 0:
        _fail(f"--connect-timeout {args.connect_timeout}: need seconds > 0")
    if args.concurrency < 1:
        _fail(f"--concurrency {args.concurrency}: need at least 1")
    if not 1 <= args.mesh_size <= MESH_NODES:
        _fail(f"--mesh-size {args.mesh_size}: need 1..{MESH_NODES}")
    if not 0 <= args.port <= 65535 or (args.port and args.port + args.devices - 1 > 65535):
        _fail(f"--port {args.port}: devices need ports {args.port}..{args.port + args.devices - 1}")
    check_loopback(args.host)
    check_engine(args)
    check_live(args)
    if args.cloud and (args.connect or args.spread or args.devices != 1 or args.workers != 1):
        _fail("--cloud runs one listening cloud: no --connect, --spread, --devices or --workers")
    if args.connect is None and args.tls:
        _fail("--tls needs --connect (listening devices speak plain TCP)")
    if args.spread and (args.connect or args.no_source_hosts):
        _fail("--spread is for listening devices with their own addresses")
    if not args.tls and (args.verify or args.cafile or args.server_name):
        _fail("--verify, --cafile and --server-name need --connect ... --tls")


def parse_address(text: str, remote: bool = False) -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT, loopback only unless ``remote``."""
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        _fail(f"--connect {text!r}: expected HOST:PORT, e.g. 127.0.0.1:23779")
    if not remote:
        check_loopback(host)
    return host, int(port_text)


# ------------------------------------------------------------------------------- chaos
def _read_profile(path: str) -> dict[str, Any]:
    """The profile's raw tables (validated alone first, so its errors name the file)."""
    ChaosConfig.load(path)
    text = Path(path).read_text(encoding="utf-8")
    suffix = Path(path).suffix.lower()
    as_json = suffix == ".json" or (suffix != ".toml" and text.lstrip().startswith("{"))
    data: dict[str, Any] = json.loads(text) if as_json else tomllib.loads(text)
    return data


def build_chaos(args: argparse.Namespace) -> ChaosConfig | None:
    """The --chaos profile with every chaos option given on the command line on top."""
    data: dict[str, Any] = _read_profile(args.chaos) if args.chaos else {}
    given: list[tuple[str, Any]] = []
    for _, key, _, _, _ in _CHAOS:
        if (value := getattr(args, _dest(key))) is not None:
            given.append((key, value))
    if args.partition_mode is not None:
        refuse, blackhole = _PARTITION_MODES[args.partition_mode]
        given += [("partition.refuse_connections", refuse), ("partition.blackhole", blackhole)]
    for way in ("to_device", "from_device"):
        given += [(f"{way}.{key}", value) for key, value in getattr(args, way) or ()]
    for key, value in given:
        *tables, leaf = key.split(".")
        node = data
        for name in tables:
            node = _table(node, name)
        node[leaf] = value
    if not data:
        return None
    source = (
        f"{args.chaos} + command line" if args.chaos and given else args.chaos or "command line"
    )
    return ChaosConfig.from_dict(data, source=source)


def _table(node: dict[str, Any], key: str) -> dict[str, Any]:
    """``node[key]`` as a table (made, or replacing a null, when it is not one)."""
    if not isinstance(node.get(key), dict):
        node[key] = {}
    table: dict[str, Any] = node[key]
    return table


# ------------------------------------------------------------------------------- run
def run(args: argparse.Namespace, out: TextIO) -> int:
    _check(args)
    remote = args.engine == "ray" and args.allow_remote_controller
    target = parse_address(args.connect, remote) if args.connect else None
    if args.engine == "ray":
        from cyncsim.tools._extras import require

        require("ray", "--engine ray")
    chaos = build_chaos(args)
    model = DeviceModel.load(args.model) if args.model else None
    seed = args.seed if args.seed is not None else secrets.randbits(63)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    logger.info("seed %d", seed)
    out.write(f"{PROG}: seed {seed} (--seed {seed} reproduces this run)\n")
    out.flush()
    if args.cloud:
        return asyncio.run(_serve_cloud(args, out, seed, model, chaos))
    return asyncio.run(_serve(args, out, seed, model, chaos, target))


class _Stop:
    """Why serve stops: SIGINT or SIGTERM set ``event`` and name themselves in ``why``. The
    handlers are installed for the ``with`` block only, whatever ends it."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.why: list[str] = []
        self._loop = asyncio.get_running_loop()

    def _on_signal(self, name: str) -> None:
        self.why.append(name)
        self.event.set()

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(sig, self._on_signal, sig.name)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._loop.remove_signal_handler(sig)


async def _serve_cloud(
    args: argparse.Namespace,
    out: TextIO,
    seed: int,
    model: DeviceModel | None,
    chaos: ChaosConfig | None,
) -> int:
    """--cloud: one CyncCloudSimulator listening until Ctrl-C, SIGTERM or --duration."""
    from cyncsim.simulator.cloud import CyncCloudSimulator

    began = time.monotonic()
    cloud = CyncCloudSimulator(
        model,
        host=args.host,
        port=args.port,
        seed=seed,
        time_scale=args.time_scale,
        chaos_config=chaos,
        variant=args.variant,
        record=args.record,
    )
    with _Stop() as stop:
        try:
            await cloud.start()
            if args.record:
                out.write(f"{PROG}: recording to {args.record}\n")
            until = f"stopping after {args.duration:g} s" if args.duration else "Ctrl-C to stop"
            out.write(
                f"{PROG}: cloud listening on {format_address(args.host, cloud.port)}, "
                f"time scale {args.time_scale:g}; {until}\n"
            )
            out.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.event.wait(), args.duration)
            if not stop.why:
                stop.why.append("duration")
        finally:
            await cloud.stop()
    links = len(cloud.links)
    out.write(
        f"{PROG}: stopped ({stop.why[0]}) after {time.monotonic() - began:.1f} s: {links} "
        f"connection{'s' if links != 1 else ''}, {len(cloud.seen)} packets; seed {seed}\n"
    )
    out.flush()
    return 0


def _runner(
    args: argparse.Namespace,
    seed: int,
    model: DeviceModel | None,
    chaos: ChaosConfig | None,
    on_event: Callable[[str], None] | None = None,
) -> CyncFleet | FleetWorkers | RayFleet:
    common: dict[str, Any] = {
        "seed": seed,
        "time_scale": args.time_scale,
        "chaos_config": chaos,
        "record": args.record,
        "identities": args.identities,
        "source_hosts": not args.no_source_hosts,
        "host": args.host,
        "port": args.port,
        "spread": args.spread,
        "mesh_size": args.mesh_size,
        "firmware_version": args.firmware,
        "variant": args.variant,
        "concurrency": args.concurrency,
    }
    try:
        if args.engine == "ray":
            return RayFleet(
                args.devices, args.shards, address=args.ray_address, model=model,
                restart_shards=args.restart_shards, source_pools=args.source_cidr or (),
                allow_remote_controller=args.allow_remote_controller,
                on_event=on_event, log_level=logging.INFO if args.verbose else logging.WARNING,
                **common,
            )  # fmt: skip
        if args.workers > 1:
            level = logging.INFO if args.verbose else logging.WARNING
            return FleetWorkers(
                args.devices, args.workers, model_path=args.model, log_level=level, **common
            )
        return CyncFleet(args.devices, model=model, **common)
    except ValueError as exc:
        raise CyncError(str(exc), reason="usage") from None


async def _serve(
    args: argparse.Namespace,
    out: TextIO,
    seed: int,
    model: DeviceModel | None,
    chaos: ChaosConfig | None,
    target: tuple[str, int] | None,
) -> int:
    with _Stop() as stop:
        return await _serve_until(args, out, seed, model, chaos, target, stop)


async def _serve_until(
    args: argparse.Namespace,
    out: TextIO,
    seed: int,
    model: DeviceModel | None,
    chaos: ChaosConfig | None,
    target: tuple[str, int] | None,
    stop: _Stop,
) -> int:
    began = time.monotonic()

    def on_event(line: str) -> None:  # a Ray shard died or came back
        out.write(f"{PROG}: {line}\n")
        out.flush()

    runner = _runner(args, seed, model, chaos, on_event)
    stopping = asyncio.ensure_future(stop.event.wait())
    try:
        if target is None:
            starting = asyncio.ensure_future(runner.start())
        else:
            starting = asyncio.ensure_future(
                runner.connect(
                    *target,
                    args.tls,
                    verify=args.verify,
                    cafile=args.cafile,
                    server_hostname=args.server_name,
                    timeout=args.connect_timeout,
                )
            )
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        else:
            starting.result()
            _announce(args, out, runner, target)
            async with live_view(runner, out, metrics=args.metrics):
                await asyncio.wait((stopping,), timeout=args.duration)
            if not stop.why:
                stop.why.append("duration" if args.duration is not None else "stop")
    finally:
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
        await runner.stop()
    stats = runner.stats()
    lost = runner.lost_devices() if isinstance(runner, RayFleet) else 0
    out.write(
        f"{PROG}: stopped ({stop.why[0]}) after {time.monotonic() - began:.1f} s: "
        f"{stats.summary()}{f', {lost} devices lost' if lost else ''}; seed {seed}\n"
    )
    out.flush()
    return 0


def _announce(
    args: argparse.Namespace,
    out: TextIO,
    runner: CyncFleet | FleetWorkers | RayFleet,
    target: tuple[str, int] | None,
) -> None:
    if not args.quiet:
        for line in runner.lines():
            out.write(line + "\n")
    n = len(runner)
    devices = f"{n} device{'s' if n != 1 else ''}"
    if target is None:
        what = "listening on their own addresses" if args.spread else f"listening on {args.host}"
    else:
        what = f"connected to {format_address(*target)}{' over TLS' if args.tls else ''}"
    procs = f" in {args.workers} processes" if args.workers > 1 else ""
    if isinstance(runner, RayFleet):
        procs = f" in {len(runner.shards)} Ray shards"
    if args.record and isinstance(runner, RayFleet):
        where = [f"{path} (on {node})" for path, node in runner.record_paths()]
        out.write(f"{PROG}: recording to {', '.join(where)}\n")
    elif args.record and args.workers > 1:
        files = ", ".join(str(worker_record_path(args.record, k)) for k in range(args.workers))
        out.write(f"{PROG}: recording to {files}\n")
    elif args.record:
        out.write(f"{PROG}: recording to {args.record}\n")
    stop = f"stopping after {args.duration:g} s" if args.duration else "Ctrl-C to stop"
    out.write(f"{PROG}: {devices} {what}{procs}, time scale {args.time_scale:g}; {stop}\n")
    out.flush()
