# Tests of simulator.ports: ports are bindable, never handed out twice within the ttl (in
# one process, with a kernel that repeats itself, and across concurrent processes), and
# CYNC_SIM_PORT is validated.
from __future__ import annotations

import logging
import multiprocessing
import socket
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from cyncsim.simulator import ports
from cyncsim.simulator.ports import (
    PORT_ENV,
    PortError,
    default_port,
    find_free_port,
    registry_paths,
)


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def scripted_probe(monkeypatch: pytest.MonkeyPatch, offers: list[int]) -> list[int]:
    """Make the kernel 'offer' these ports in turn; returns the list of offers made."""
    made: list[int] = []
    it: Iterator[int] = iter(offers)

    def probe(host: str) -> int:
        made.append(next(it))
        return made[-1]

    monkeypatch.setattr(ports, "_probe_port", probe)
    return made


def test_ports_are_bindable_and_distinct(tmp_path: Path) -> None:
    got = [find_free_port(registry_dir=tmp_path) for _ in range(30)]
    assert len(set(got)) == 30
    assert all(1 <= p <= 65535 and bindable(p) for p in got)
    lock, registry = registry_paths(tmp_path)
    assert lock.exists() and registry.exists()


def test_default_registry_in_temp_dir_and_localhost() -> None:
    port = find_free_port("localhost")
    assert bindable(port)


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6 or not bindable(0, "::1"):
        pytest.skip("no IPv6 loopback on this machine")
    assert bindable(find_free_port("::1"), "::1")


def test_registry_skips_a_port_the_kernel_offers_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = scripted_probe(monkeypatch, [40001, 40001, 40001, 40002, 40001])
    assert find_free_port(registry_dir=tmp_path) == 40001
    assert find_free_port(registry_dir=tmp_path) == 40002
    assert made == [40001, 40001, 40001, 40002]
    # after the ttl the port may be handed out again
    now = ports._wall_clock()
    monkeypatch.setattr(ports, "_wall_clock", lambda: now + ports.DEFAULT_TTL_S + 1)
    assert find_free_port(registry_dir=tmp_path) == 40001


def test_no_fresh_port_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted_probe(monkeypatch, [40010] * 100)
    assert find_free_port(registry_dir=tmp_path) == 40010
    with pytest.raises(PortError, match=r"no free port on 127\.0\.0\.1"):
        find_free_port(registry_dir=tmp_path)


def test_unreadable_registry_is_logged_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, registry = registry_paths(tmp_path)
    registry.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="cyncsim.ports"):
        port = find_free_port(registry_dir=tmp_path)
    assert any("unreadable port registry" in r.message for r in caplog.records)
    assert str(port) in registry.read_text()


@pytest.mark.parametrize("host", ["192.0.2.1", "0.0.0.0", "example.invalid", "::"])
def test_only_loopback_hosts(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    made = scripted_probe(monkeypatch, [])
    with pytest.raises(PortError, match=host.replace(".", r"\.")):
        find_free_port(host)
    assert made == []  # rejected before any socket is opened


def test_bad_ttl(tmp_path: Path) -> None:
    with pytest.raises(PortError, match="ttl_s=0"):
        find_free_port(registry_dir=tmp_path, ttl_s=0)


def _worker(registry_dir: str, barrier: Barrier, out: Queue[list[int]], count: int) -> None:
    barrier.wait(timeout=60)
    out.put([find_free_port(registry_dir=registry_dir) for _ in range(count)])


def test_concurrent_processes_get_distinct_bindable_ports(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    workers, count = 4, 15
    barrier = ctx.Barrier(workers)
    out: Queue[list[int]] = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(str(tmp_path), barrier, out, count))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * workers
    got = [port for result in results for port in result]
    assert len(got) == workers * count and len(set(got)) == len(got)
    assert all(bindable(p) for p in got)


def test_default_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PORT_ENV, raising=False)
    assert default_port() == 0
    monkeypatch.setenv(PORT_ENV, "23779")
    assert default_port() == 23779
    assert default_port({PORT_ENV: " 8080 "}) == 8080
    assert default_port({PORT_ENV: ""}) == 0
    assert default_port({}) == 0


@pytest.mark.parametrize("value", ["0", "65536", "-1", "abc", "80.5", "0x50"])
def test_default_port_rejects_non_ports(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PORT_ENV, value)
    with pytest.raises(PortError) as info:
        default_port()
    assert f"CYNC_SIM_PORT={value!r}" in str(info.value) and "1..65535" in str(info.value)
    assert info.value.reason == "port"
