# cyncsim's asyncio I/O layer around the pure core: simulated devices and cloud on real
# sockets, chaos, recording, the controller-side transport and the port allocator.
#
# Names are imported on first use (PEP 562): the pytest plugin lives in this package and is
# loaded by pytest before coverage measurement starts, so importing the package must not
# import the rest of the project.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cyncsim.simulator.cloud import CloudLink, CyncCloudSimulator
    from cyncsim.simulator.device import (
        DEFAULT_FIRMWARE,
        CyncDeviceSimulator,
        DeviceState,
        device_ssl_context,
    )
    from cyncsim.simulator.fleet import CyncFleet
    from cyncsim.simulator.ports import default_port, find_free_port
    from cyncsim.simulator.record import Recorder
    from cyncsim.simulator.transport import ReliableTransport, Result

_WHERE = {
    "CloudLink": "cyncsim.simulator.cloud",
    "CyncCloudSimulator": "cyncsim.simulator.cloud",
    "DEFAULT_FIRMWARE": "cyncsim.simulator.device",
    "CyncDeviceSimulator": "cyncsim.simulator.device",
    "CyncFleet": "cyncsim.simulator.fleet",
    "DeviceState": "cyncsim.simulator.device",
    "device_ssl_context": "cyncsim.simulator.device",
    "default_port": "cyncsim.simulator.ports",
    "find_free_port": "cyncsim.simulator.ports",
    "Recorder": "cyncsim.simulator.record",
    "ReliableTransport": "cyncsim.simulator.transport",
    "Result": "cyncsim.simulator.transport",
}

__all__ = [
    "DEFAULT_FIRMWARE",
    "CloudLink",
    "CyncCloudSimulator",
    "CyncDeviceSimulator",
    "CyncFleet",
    "DeviceState",
    "Recorder",
    "ReliableTransport",
    "Result",
    "default_port",
    "device_ssl_context",
    "find_free_port",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'simulator' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
