# The plugin's cync_dialing_fleet, the fixture controller authors use: devices dial the
# controller under test (here the project's learned cloud simulator, or a silent server), each
# from its own loopback address; the factory returns once every hello was answered, names the
# devices still waiting when that does not happen, and stops the devices in reverse order.
from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from cyncsim.replay.errors import CyncError
from cyncsim.simulator.cloud import CyncCloudSimulator
from cyncsim.simulator.fleet import CyncFleet
from tests.support import self_signed_cert

DialingFleet = Callable[..., Awaitable[CyncFleet]]


@pytest_asyncio.fixture
async def cloud() -> AsyncIterator[CyncCloudSimulator]:
    async with CyncCloudSimulator(seed=7, time_scale=0.05) as sim:
        yield sim


@pytest_asyncio.fixture
async def silent() -> AsyncIterator[int]:
    """A controller that accepts and reads but never answers: hellos stay unanswered."""
    conns: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    for w in conns:
        w.close()
    server.close()
    await server.wait_closed()


async def test_devices_dial_from_own_addresses_and_are_answered(
    cync_dialing_fleet: DialingFleet, cloud: CyncCloudSimulator
) -> None:
    fleet = await cync_dialing_fleet(3, connect=("127.0.0.1", cloud.port))
    assert len(fleet) == 3
    assert all(d.handshaken for d in fleet.devices)
    sources = {d.connection.local[0] for d in fleet.devices if d.connection is not None}
    assert len(sources) == 3 and all(s.startswith("127.") and s != "127.0.0.1" for s in sources)
    assert {link.device_id for link in cloud.links} == {d.device_id for d in fleet.devices}


async def test_tls(cync_dialing_fleet: DialingFleet, tmp_path: Path, cync_test_seed: int) -> None:
    cert, key = self_signed_cert(tmp_path, "cync-test")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    async with CyncCloudSimulator(seed=cync_test_seed, time_scale=0.05, tls=ctx) as sim:
        fleet = await cync_dialing_fleet(2, connect=("127.0.0.1", sim.port), tls=True)
        assert all(d.handshaken for d in fleet.devices)
        assert len(sim.links) == 2


async def test_timeout_names_devices_whose_hello_is_unanswered(
    cync_dialing_fleet: DialingFleet, silent: int
) -> None:
    with pytest.raises(CyncError) as info:
        await cync_dialing_fleet(2, connect=("127.0.0.1", silent), timeout=0.5)
    text = str(info.value)
    assert "2 of 2 devices still waiting after 0.5 s" in text
    assert text.count("(hello not answered)") == 2
    assert info.value.reason == "timeout"


async def test_timeout_names_devices_without_a_connection(
    cync_dialing_fleet: DialingFleet, silent: int
) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()  # nothing listens on port now
    with pytest.raises(CyncError) as info:
        await cync_dialing_fleet(1, connect=("127.0.0.1", port), timeout=0.5)
    assert "1 of 1 devices still waiting" in str(info.value)
    assert "(no connection" in str(info.value)


def test_teardown_stops_devices_in_reverse_order(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makeconftest(
        """
        import pytest
        from cyncsim.simulator.fleet import FleetDevice

        STOPPED = []

        @pytest.fixture(autouse=True)
        def log_stops(monkeypatch):
            real = FleetDevice.stop

            async def stop(self):
                if self.device_id not in STOPPED:
                    STOPPED.append(self.device_id)
                await real(self)

            monkeypatch.setattr(FleetDevice, "stop", stop)
        """
    )
    pytester.makepyfile(
        """
        import pytest_asyncio
        from cyncsim.simulator.cloud import CyncCloudSimulator
        import conftest

        STARTED = []

        @pytest_asyncio.fixture
        async def sim():
            async with CyncCloudSimulator(seed=1, time_scale=0.05) as s:
                yield s

        async def test_fleets(sim, cync_dialing_fleet):  # sim set up first, stopped last
            a = await cync_dialing_fleet(2, connect=("127.0.0.1", sim.port))
            b = await cync_dialing_fleet(2, connect=("127.0.0.1", sim.port))
            STARTED.extend(d.device_id for d in [*a.devices, *b.devices])

        def test_order():
            assert conftest.STOPPED == list(reversed(STARTED))
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)
