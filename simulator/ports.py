# Free TCP ports for simulators and tests, safe across pytest-xdist workers and processes.
#
# Strategy: ask the kernel for a free port (bind to port 0, read it, close), under a file
# lock in the temp dir, and remember every port handed out in a small JSON registry beside
# the lock for ``ttl_s`` seconds, so no two callers in any process get the same port within
# that time even if the kernel offers it again.  The registry is only a cache: an unreadable
# one is logged and started afresh.  Only loopback hosts are accepted.
#
# CYNC_SIM_PORT is not applied here (the simulator reads it through default_port()).
from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from filelock import FileLock, Timeout

from cyncsim.replay.errors import CyncError

__all__ = [
    "DEFAULT_TTL_S",
    "PORT_ENV",
    "PortError",
    "check_loopback",
    "default_port",
    "find_free_port",
    "registry_paths",
]

logger = logging.getLogger("cyncsim.ports")

PORT_ENV = "CYNC_SIM_PORT"
DEFAULT_TTL_S = 60.0
_MAX_PROBES = 64


class PortError(CyncError):
    """No usable port: a bad CYNC_SIM_PORT, a non-loopback host, or no free port found."""

    reason = "port"


def registry_paths(registry_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """(lock file, registry file) in ``registry_dir`` (default: the temp dir), per user."""
    folder = Path(registry_dir) if registry_dir is not None else Path(tempfile.gettempdir())
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    stem = f"cyncsim-ports-{user}"
    return folder / f"{stem}.lock", folder / f"{stem}.json"


def check_loopback(host: str) -> None:
    """Raise PortError unless ``host`` is a loopback address (or "localhost")."""
    if host == "localhost":
        return
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise PortError(f"host {host!r} is not an IP address or 'localhost'") from None
    if not ip.is_loopback:
        raise PortError(
            f"host {host!r} is not a loopback address (127.0.0.0/8 or ::1): "
            "cyncsim stays on loopback"
        )


def _probe_port(host: str) -> int:
    """One port the kernel considers free on ``host`` right now."""
    family, _, _, _, addr = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind(addr)
        return int(sock.getsockname()[1])


def _wall_clock() -> float:
    # Wall time, not monotonic: the registry is shared between processes.
    return time.time()


def _read_registry(path: Path) -> dict[int, float]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        logger.warning("%s: unreadable port registry (%s); starting a new one", path, e)
        return {}
    if not isinstance(raw, dict):
        logger.warning("%s: port registry is not an object; starting a new one", path)
        return {}
    out: dict[int, float] = {}
    for key, expiry in raw.items():
        try:
            out[int(key)] = float(expiry)
        except (TypeError, ValueError):
            logger.warning("%s: ignoring bad registry entry %r: %r", path, key, expiry)
    return out


def _write_registry(path: Path, taken: Mapping[int, float]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({str(p): t for p, t in sorted(taken.items())}), encoding="utf-8")
    os.replace(tmp, path)


def find_free_port(
    host: str = "127.0.0.1",
    *,
    ttl_s: float = DEFAULT_TTL_S,
    registry_dir: str | os.PathLike[str] | None = None,
    lock_timeout_s: float = 30.0,
) -> int:
    """A TCP port free on loopback ``host`` that no other caller got in the last ``ttl_s`` s.

    Safe between threads, processes and pytest-xdist workers sharing ``registry_dir``
    (default: the temp dir).  Like any probe, the port can still be taken by an unrelated
    program before you bind it; bind soon.  Raises PortError for a non-loopback host, when
    the lock cannot be taken within ``lock_timeout_s``, or when no port could be found.
    """
    check_loopback(host)
    if not ttl_s > 0:
        raise PortError(f"ttl_s={ttl_s!r} must be > 0")
    lock_path, reg_path = registry_paths(registry_dir)
    try:
        with FileLock(lock_path, timeout=lock_timeout_s):
            now = _wall_clock()
            taken = {p: exp for p, exp in _read_registry(reg_path).items() if exp > now}
            for _ in range(_MAX_PROBES):
                port = _probe_port(host)
                if port not in taken:
                    taken[port] = now + ttl_s
                    _write_registry(reg_path, taken)
                    return port
    except Timeout:
        raise PortError(
            f"{lock_path}: could not take the port lock within {lock_timeout_s} s"
        ) from None
    except OSError as e:
        raise PortError(f"cannot find a free port on {host} ({reg_path}): {e}") from None
    raise PortError(
        f"no free port on {host}: the kernel offered only ports handed out in the last "
        f"{ttl_s} s ({_MAX_PROBES} tries; registry {reg_path})"
    )


def default_port(environ: Mapping[str, str] | None = None) -> int:
    """The port from CYNC_SIM_PORT (1..65535), or 0 ("pick a free one") if unset or empty.

    Raises PortError naming the variable and its value if it is not a port number.
    """
    env = os.environ if environ is None else environ
    raw = env.get(PORT_ENV)
    if raw is None or not raw.strip():
        return 0
    port = None
    with contextlib.suppress(ValueError):
        port = int(raw.strip(), 10)
    if port is None or not 1 <= port <= 65535:
        raise PortError(f"{PORT_ENV}={raw!r} is not a port number: allowed 1..65535")
    return port
