# cyncsim's asyncio I/O layer around the pure core: simulated devices and cloud on real
# sockets, chaos, recording, the controller-side transport and the port allocator.
from simulator.chaos import ChaosConfig, ChaosPolicy, SeedTree
from simulator.cloud import CloudLink, CyncCloudSimulator
from simulator.device import (
    DEFAULT_FIRMWARE,
    CyncDeviceSimulator,
    DeviceState,
    device_ssl_context,
)
from simulator.ports import default_port, find_free_port
from simulator.record import Recorder

__all__ = [
    "DEFAULT_FIRMWARE",
    "ChaosConfig",
    "ChaosPolicy",
    "CloudLink",
    "CyncCloudSimulator",
    "CyncDeviceSimulator",
    "DeviceState",
    "Recorder",
    "SeedTree",
    "default_port",
    "device_ssl_context",
    "find_free_port",
]
