# cyncsim: record-replay simulator for GE Cync (C by GE) smart lights.
#
# This is the package root and its public API. The repository keeps its folders at the top
# level (replay/, simulator/, tools/, captures/); installed they are cyncsim.replay,
# cyncsim.simulator, cyncsim.tools and cyncsim.captures, so nothing generic lands at the top of
# a user's site-packages.
#
# Names are imported on first use (PEP 562): pytest loads the plugin (cyncsim.simulator.
# pytest_plugin) before coverage starts, and `cyncsim --help` must stay fast, so importing the
# package itself imports nothing else.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cyncsim.captures import load_default_model
    from cyncsim.replay.capture import CaptureResult, read_capture, read_captures
    from cyncsim.replay.chaos import ChaosConfig
    from cyncsim.replay.conformance import DiffReport, diff, diff_files
    from cyncsim.replay.errors import CaptureError, CyncError, ModelError, PacketDecodeError
    from cyncsim.replay.model import DeviceModel, learn_model
    from cyncsim.replay.protocol import PacketType, decode_packet
    from cyncsim.simulator.cloud import CyncCloudSimulator
    from cyncsim.simulator.device import CyncDeviceSimulator
    from cyncsim.simulator.fleet import CyncFleet
    from cyncsim.simulator.transport import ReliableTransport, Result

__version__ = "0.1.0"

_WHERE = {
    "CaptureError": "cyncsim.replay.errors",
    "CaptureResult": "cyncsim.replay.capture",
    "ChaosConfig": "cyncsim.replay.chaos",
    "CyncCloudSimulator": "cyncsim.simulator.cloud",
    "CyncDeviceSimulator": "cyncsim.simulator.device",
    "CyncError": "cyncsim.replay.errors",
    "CyncFleet": "cyncsim.simulator.fleet",
    "DeviceModel": "cyncsim.replay.model",
    "DiffReport": "cyncsim.replay.conformance",
    "ModelError": "cyncsim.replay.errors",
    "PacketDecodeError": "cyncsim.replay.errors",
    "PacketType": "cyncsim.replay.protocol",
    "ReliableTransport": "cyncsim.simulator.transport",
    "Result": "cyncsim.simulator.transport",
    "decode_packet": "cyncsim.replay.protocol",
    "diff": "cyncsim.replay.conformance",
    "diff_files": "cyncsim.replay.conformance",
    "learn_model": "cyncsim.replay.model",
    "load_default_model": "cyncsim.captures",
    "read_capture": "cyncsim.replay.capture",
    "read_captures": "cyncsim.replay.capture",
}

__all__ = [
    "CaptureError",
    "CaptureResult",
    "ChaosConfig",
    "CyncCloudSimulator",
    "CyncDeviceSimulator",
    "CyncError",
    "CyncFleet",
    "DeviceModel",
    "DiffReport",
    "ModelError",
    "PacketDecodeError",
    "PacketType",
    "ReliableTransport",
    "Result",
    "__version__",
    "decode_packet",
    "diff",
    "diff_files",
    "learn_model",
    "load_default_model",
    "read_capture",
    "read_captures",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'cyncsim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
