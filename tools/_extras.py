# Optional extras: a command that needs one that is not installed says so in one line.
#
# Strategy: the heavy parts (matplotlib for plots, dpkt and scapy for the bench's reference
# parsers) are extras of the distribution, imported only by the commands that use them. Those
# commands call require() before doing any work, so a missing extra is one clear CyncError
# line (exit status 2), never a traceback halfway through a run.
from __future__ import annotations

import importlib
from types import ModuleType

from cyncsim.replay.errors import CyncError

__all__ = ["EXTRAS", "require"]

# module -> the extra that installs it
EXTRAS = {
    "matplotlib": "report",
    "dpkt": "bench",
    "scapy": "bench",
    "ray": "ray",
    "prometheus_client": "metrics",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise a CyncError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module.split(".", 1)[0], "dev")
        raise CyncError(
            f"{purpose} needs {module}, which is not installed: pip install 'cyncsim[{extra}]'",
            reason="missing_extra",
        ) from exc
