# RayFleet on a local Ray runtime (ray.init(num_cpus=2)): 2 shards x 1,000 devices dial a
# loopback CyncCloudSimulator; merged stats, device lines identical to --workers 2 and to one
# process, a killed shard reported with its devices, restart, source pools, and the CLI.
#
# Strategy: one Ray runtime for the module (it takes seconds to start); every RayFleet stops
# (and kills its actors) before the next starts, so 2 CPUs suffice.  The placement helpers are
# pure and tested without ray.  The module skips, with the reason, only when ray is missing.
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cyncsim.replay.errors import CyncError
from cyncsim.simulator.cloud import CyncCloudSimulator
from cyncsim.simulator.fleet import (
    POOL_RESOURCE,
    CyncFleet,
    FleetWorkers,
    RayFleet,
    assign_source_hosts,
    generate_members,
    mesh_shards,
)
from tests.support import eventually

SCALE = 0.02
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'cyncsim[ray]'")
    pools = {POOL_RESOURCE.format(p): 2 for p in range(2)}
    ray.init(num_cpus=2, resources=pools, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def _where(line: str) -> str:
    """A device line without the kernel's source port (the rest is the device's own)."""
    return re.sub(r"(dial \S+):\d+ ->", r"\1 ->", line)


# ---------------------------------------------------------------------------- placement
def test_shards_are_cut_on_mesh_boundaries() -> None:
    members = generate_members(1000, seed=1, mesh_size=200)
    shares = mesh_shards(members, 2)
    assert [len(s) for s in shares] == [400, 600]  # 5 meshes: 2 and 3
    assert {m.mesh for m in shares[0]}.isdisjoint({m.mesh for m in shares[1]})
    assert [m for s in shares for m in s] == members
    with pytest.raises(ValueError, match="5 mesh"):
        mesh_shards(members, 6)


def test_source_pools_give_each_device_its_own_address() -> None:
    shares = mesh_shards(generate_members(40, seed=1, mesh_size=10), 4)
    pooled = assign_source_hosts(shares, ["127.1.0.0/24", "127.2.0.0/24"])
    assert [m.source_host for m in pooled[0][:2]] == ["127.1.0.1", "127.1.0.2"]
    assert pooled[2][0].source_host == "127.1.0.11"  # pool 0 again, after shard 0's devices
    assert pooled[1][0].source_host == "127.2.0.1"
    hosts = [m.source_host for s in pooled for m in s]
    assert len(set(hosts)) == 40
    # 127.0.0.1 (the controller's) is skipped; a small pool is reused up to the port range
    small = assign_source_hosts(shares, ["127.0.0.0/29"], ports=10)
    assert "127.0.0.1" not in {m.source_host for share in small for m in share}
    with pytest.raises(CyncError, match="connections per address"):
        assign_source_hosts(shares, ["127.0.0.0/30"], ports=10)
    with pytest.raises(CyncError, match="--allow-remote-controller"):
        assign_source_hosts(shares, ["10.0.0.0/16"])


# ---------------------------------------------------------------------------- Ray
async def test_two_shards_of_1000_devices(ray_runtime: Any) -> None:
    n, seed = 2000, 7
    async with CyncCloudSimulator(seed=3, time_scale=SCALE) as cloud:
        fleet = RayFleet(n, 2, seed=seed, time_scale=SCALE, mesh_size=250, on_event=None)
        try:
            await fleet.connect("127.0.0.1", cloud.port, timeout=30)
            assert [len(s) for s in fleet.shares] == [1000, 1000]
            ids = {m.device_id for m in fleet.members}
            await cloud.wait_for(
                lambda: {lk.device_id for lk in cloud.links if lk.open} == ids, timeout=30
            )
            peers = {lk.conn.peer[0] for lk in cloud.links if lk.open}
            assert peers == {m.source_host for m in fleet.members}
            # Shard stats are snapshots (a shard slow to answer keeps its last one): ask
            # until every shard has reported its devices connected.
            deadline = asyncio.get_running_loop().time() + 30
            while (merged := await fleet.refresh_stats(timeout=10)).connected < n:
                assert asyncio.get_running_loop().time() < deadline, merged
            parts = fleet.shard_stats()
            assert merged.devices == merged.connected == n
            assert [p.connected for p in parts] == [1000, 1000]
            for name in ("devices", "connected", "connections", "packets_in", "packets_out"):
                assert getattr(merged, name) == sum(getattr(p, name) for p in parts), name
            assert merged.answers == sum(p.answers for p in parts) > 0
            for kind, hist in merged.latency.items():
                assert hist.count == sum(p.latency[kind].count for p in parts if kind in p.latency)
            ray_lines = fleet.lines()

            events: list[str] = []
            fleet.on_event = events.append
            ray_runtime.kill(fleet.shards[1].actor)
            await eventually(lambda: fleet.lost_devices() == 1000, 30, "shard 1 reported dead")
            assert events == [events[0]] and "shard 1 died" in events[0]
            assert "1000 devices lost" in events[0]
            lost = {m.device_id for m in fleet.shares[1]}
            await cloud.wait_for(
                lambda: {lk.device_id for lk in cloud.links if lk.open} == ids - lost, timeout=30
            )
        finally:
            await fleet.stop()
            await fleet.stop()  # safe twice
        final = fleet.stats()
        assert final.devices == 1000 and final.connections == n
        await cloud.wait_for(lambda: not any(lk.open for lk in cloud.links), timeout=30)

        workers = FleetWorkers(n, 2, seed=seed, time_scale=SCALE, mesh_size=250)
        try:
            await workers.connect("127.0.0.1", cloud.port, timeout=30)
            worker_lines = workers.lines()
        finally:
            await workers.stop()
        one = CyncFleet(n, seed=seed, time_scale=SCALE, mesh_size=250)
        try:
            await one.connect("127.0.0.1", cloud.port, timeout=30)
            one_lines = one.lines()
        finally:
            await one.stop()
    assert len(ray_lines) == n
    assert [_where(x) for x in ray_lines] == [_where(x) for x in worker_lines]
    assert [_where(x) for x in ray_lines] == [_where(x) for x in one_lines]
    assert [m.seed for m in fleet.members] == [m.seed for m in one.members]
    assert [m.seed for m in fleet.members] == [m.seed for m in workers.members]


async def test_restart_and_source_pools(ray_runtime: Any) -> None:
    async with CyncCloudSimulator(seed=3, time_scale=SCALE) as cloud:
        events: list[str] = []
        fleet = RayFleet(
            20, 2, seed=2, time_scale=SCALE, mesh_size=10, restart_shards=True,
            source_pools=["127.1.0.0/16", "127.2.0.0/16"], on_event=events.append,
        )  # fmt: skip
        try:
            await fleet.connect("127.0.0.1", cloud.port)
            assert {m.source_host for m in fleet.shares[0]} == {
                f"127.1.0.{i}" for i in range(1, 11)
            }
            assert {m.source_host for m in fleet.shares[1]} == {
                f"127.2.0.{i}" for i in range(1, 11)
            }
            await cloud.wait_for(lambda: sum(lk.open for lk in cloud.links) == 20, timeout=20)
            await fleet.refresh_stats()
            ray_runtime.kill(fleet.shards[0].actor)
            await eventually(lambda: len(events) == 2, 30, "shard 0 died and restarted")
            assert "shard 0 died" in events[0] and "10 devices lost" in events[0]
            assert events[1] == "shard 0 restarted: 10 devices back"
            assert fleet.lost_devices() == 0
            await cloud.wait_for(lambda: sum(lk.open for lk in cloud.links) == 20, timeout=20)
            live = await fleet.refresh_stats()
            assert live.devices == live.connected == 20 and live.connections == 30
        finally:
            await fleet.stop()
        peers = {lk.conn.peer[0] for lk in cloud.links}
        assert peers == {m.source_host for m in fleet.members}


async def test_failed_start_is_one_error(ray_runtime: Any) -> None:
    from cyncsim.simulator.ports import find_free_port

    fleet = RayFleet(4, 2, seed=1, time_scale=SCALE, mesh_size=2)
    with pytest.raises(CyncError, match=r"fleet shard \d: fleet: 2 of 2 devices failed") as err:
        await fleet.connect("127.0.0.1", find_free_port(), timeout=0.3)
    assert err.value.reason == "connect_failed"
    await fleet.stop()


def test_serve_engine_ray_records_per_shard_and_stops_on_sigterm(
    ray_runtime: Any, tmp_path: Path
) -> None:
    """The CLI starts its own local runtime (K CPUs), prints where each shard records, and
    stops cleanly on SIGTERM although ray.init replaced the SIGTERM handler."""
    record = tmp_path / "run.pcapng"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cyncsim.tools.cli", "serve", "--engine", "ray", "--shards",
         "2", "--devices", "4", "--mesh-size", "2", "--seed", "5", "--time-scale", str(SCALE),
         "--record", str(record)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C to stop" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    lines += out.splitlines(keepends=True)
    assert proc.returncode == 0, err
    text = "".join(lines)
    shards = [tmp_path / "run.shard0.pcapng", tmp_path / "run.shard1.pcapng"]
    assert f"recording to {shards[0]} (on " in text and f"{shards[1]} (on " in text
    assert "4 devices listening on 127.0.0.1 in 2 Ray shards" in text
    assert re.search(r"stopped \(SIGTERM\) after [\d.]+ s: 4 devices, ", lines[-1])
    assert all(p.exists() for p in shards)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--source-cidr", "127.1.0.0/16"], "--source-cidr needs --engine ray"),
        (["--restart-shards"], "--restart-shards needs --engine ray"),
        (["--engine", "ray", "--workers", "2", "--devices", "2"], "no --workers"),
        (["--engine", "ray", "--shards", "3", "--devices", "2"], "--shards 3"),
        (["--engine", "ray", "--shards", "1", "--connect", "192.168.1.5:23779"], "not a loopback"),
        (["--engine", "ray", "--shards", "1", "--source-cidr", "127.1.0.0/16"], "for dialling"),
        (["--engine", "ray", "--devices", "10"], "1 mesh(es)"),
        (["--engine", "ray", "--devices", "4", "--mesh-size", "2", "--connect",
          "127.0.0.1:9", "--source-cidr", "10.0.0.0/16"], "--allow-remote-controller"),
    ],
)  # fmt: skip
def test_engine_options_exit_2_with_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from cyncsim.tools.cli import main

    if "ray" in argv:
        pytest.importorskip("ray", reason="ray is not installed: pip install 'cyncsim[ray]'")
    code = main(["serve", *argv])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("cyncsim serve: error: ") and needle in err[0], err
