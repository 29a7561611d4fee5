# Fleets over several machines: a controller or source address beyond loopback needs the
# explicit opt-in (allow_remote, `serve --allow-remote-controller`), and the opt-in reaches
# every device of a fleet. Nothing here sends a packet: the guard acts before any dial.
from __future__ import annotations

import dataclasses

import pytest

from cyncsim.simulator.device import CyncDeviceSimulator
from cyncsim.simulator.fleet import CyncFleet, generate_members
from cyncsim.simulator.ports import PortError

REMOTE = "192.0.2.10"  # TEST-NET-1: documentation only, never dialled here


def test_a_device_refuses_a_remote_source_without_the_opt_in() -> None:
    with pytest.raises(PortError, match="not a loopback address"):
        CyncDeviceSimulator("6457e7f2", seed=1, source_host=REMOTE)
    dev = CyncDeviceSimulator("6457e7f2", seed=1, source_host=REMOTE, allow_remote=True)
    assert dev.allow_remote


async def test_a_device_refuses_to_dial_a_remote_controller_without_the_opt_in() -> None:
    dev = CyncDeviceSimulator("6457e7f2", seed=1)
    with pytest.raises(PortError, match="not a loopback address"):
        await dev.connect(REMOTE, 23779, wait=False)
    await dev.stop()


def test_the_opt_in_reaches_every_fleet_device() -> None:
    members = [
        dataclasses.replace(m, source_host=f"192.0.2.{m.index + 1}")
        for m in generate_members(3, seed=4)
    ]
    with pytest.raises(PortError):
        CyncFleet(members=members, seed=4)
    fleet = CyncFleet(members=members, seed=4, allow_remote=True)
    assert fleet.allow_remote and all(d.allow_remote for d in fleet.devices)


def test_ray_shards_get_the_opt_in() -> None:
    pytest.importorskip("ray", reason="ray is not installed (pip install 'cyncsim[ray]')")
    from cyncsim.simulator.fleet import RayFleet

    fleet = RayFleet(4, shards=1, seed=4, allow_remote_controller=True)
    assert fleet._opts.allow_remote
    assert not RayFleet(4, shards=1, seed=4)._opts.allow_remote
