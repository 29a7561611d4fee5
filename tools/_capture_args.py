# The options every capture-reading command shares (inspect, import, diff): which TCP ports
# are the cloud side of a pcap/pcapng, and whether to draw a progress bar.
from __future__ import annotations

import argparse

from cyncsim.replay.capture import DEFAULT_CLOUD_PORTS

__all__ = ["add_capture_options", "cloud_ports"]


def add_capture_options(p: argparse.ArgumentParser) -> None:
    """Add --cloud-port (repeatable) and --no-progress to ``p``."""
    p.add_argument(
        "--cloud-port",
        type=int,
        action="append",
        metavar="PORT",
        help=f"TCP port of the cloud side in pcap files (default {DEFAULT_CLOUD_PORTS})",
    )
    p.add_argument("--no-progress", action="store_true", help="never draw a progress bar")


def cloud_ports(args: argparse.Namespace) -> tuple[int, ...]:
    """The --cloud-port values, or the default ports."""
    return tuple(args.cloud_port) if args.cloud_port else DEFAULT_CLOUD_PORTS
