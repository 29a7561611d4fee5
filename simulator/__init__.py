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
    from simulator.chaos import ChaosConfig, ChaosPolicy, SeedTree
    from simulator.cloud import CloudLink, CyncCloudSimulator
    from simulator.device import (
        DEFAULT_FIRMWARE,
        CyncDeviceSimulator,
        DeviceState,
        device_ssl_context,
    )
    from simulator.fleet import CyncFleet
    from simulator.ports import default_port, find_free_port
    from simulator.record import Recorder
    from simulator.transport import ReliableTransport, Result

_WHERE = {
    "ChaosConfig": "simulator.chaos",
    "ChaosPolicy": "simulator.chaos",
    "SeedTree": "simulator.chaos",
    "CloudLink": "simulator.cloud",
    "CyncCloudSimulator": "simulator.cloud",
    "DEFAULT_FIRMWARE": "simulator.device",
    "CyncDeviceSimulator": "simulator.device",
    "CyncFleet": "simulator.fleet",
    "DeviceState": "simulator.device",
    "device_ssl_context": "simulator.device",
    "default_port": "simulator.ports",
    "find_free_port": "simulator.ports",
    "Recorder": "simulator.record",
    "ReliableTransport": "simulator.transport",
    "Result": "simulator.transport",
}

__all__ = [
    "DEFAULT_FIRMWARE",
    "ChaosConfig",
    "ChaosPolicy",
    "CloudLink",
    "CyncCloudSimulator",
    "CyncDeviceSimulator",
    "CyncFleet",
    "DeviceState",
    "Recorder",
    "ReliableTransport",
    "Result",
    "SeedTree",
    "default_port",
    "device_ssl_context",
    "find_free_port",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'simulator' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
