# `cyncsim serve`'s engine options: where the devices run (this process and --workers, or
# Ray shards on one machine or many; docs/scaling.md).
#
# Strategy: the options and their checks only, kept beside serve_cmd so that module stays a
# thin front end; ray itself is imported by serve only when --engine ray runs (an optional
# extra, cyncsim[ray]).
from __future__ import annotations

import argparse
from typing import NoReturn

from cyncsim.replay.errors import CyncError

__all__ = ["RAY_ONLY", "add_engine_options", "check_engine"]

RAY_ONLY = ("--ray-address", "--restart-shards", "--source-cidr", "--allow-remote-controller")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    e = p.add_argument_group("engine (see docs/scaling.md)")
    e.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process or --workers (default); ray: Ray actors, cyncsim[ray]",
    )
    e.add_argument("--ray-address", metavar="ADDR", help="a running Ray cluster (ray start)")
    e.add_argument(
        "--shards",
        type=int,
        default=2,
        metavar="K",
        help="Ray actors, whole meshes each (--record: FILE.shardK.SUFFIX each; default 2)",
    )
    e.add_argument("--restart-shards", action="store_true", help="start a shard again when it dies")
    e.add_argument(
        "--source-cidr",
        action="append",
        metavar="CIDR",
        help="dial from this pool of local addresses; repeat: one pool per node, shard k "
        "uses pool k mod P on a node with the Ray resource cyncsim_pool_<p>",
    )
    e.add_argument(
        "--allow-remote-controller",
        action="store_true",
        help="opt in to a non-loopback controller and source pools (--engine ray)",
    )


def _fail(message: str) -> NoReturn:
    raise CyncError(message, reason="usage")


def check_engine(args: argparse.Namespace) -> None:
    """One usage error line for engine options that do not go together."""
    if args.engine != "ray":
        given = [o for o in RAY_ONLY if getattr(args, o[2:].replace("-", "_"))]
        if given:
            _fail(f"{given[0]} needs --engine ray")
        return
    if args.workers != 1 or args.cloud:
        _fail("--engine ray splits the devices over --shards: no --workers or --cloud")
    if not 1 <= args.shards <= args.devices:
        _fail(f"--shards {args.shards}: need 1..{args.devices} (whole meshes each)")
    if args.source_cidr and (args.connect is None or args.no_source_hosts):
        _fail("--source-cidr is for dialling devices (--connect) with source addresses")
