# The cyncsim pytest plugin (entry point ``pytest11``): fixtures, markers and options.
#
# Strategy: keep it light.  Options and markers are registered here; fixtures import the
# simulator lazily, are factories where several objects are wanted, and tear down in reverse
# order.  One session seed (``--cync-seed``, else drawn and printed) is split per test by
# node id, so a failing test is reproduced by its seed, under pytest-xdist too (the
# controller hands its seed to the workers).  ``chaos_probabilistic`` and ``soak`` tests are
# deselected unless asked for with ``-m`` or ``--cync-nightly``.  Capture files named by
# ``--cync-replay`` or the ``cync_replay`` ini globs become test items, one per capture x device
# (simulator/_replay_items.py), replayed against the user's ``cync_replay_target`` fixture.
from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from cyncsim.simulator._replay_items import (
    SETTINGS_KEY,
    CaptureFile,
    Side,
    Target,
    add_replay_options,
    configure_replay,
)

if TYPE_CHECKING:
    from cyncsim.replay.chaos import ChaosConfig
    from cyncsim.replay.conformance import DiffReport
    from cyncsim.replay.model import DeviceModel
    from cyncsim.replay.seeds import SeedTree
    from cyncsim.simulator.device import CyncDeviceSimulator
    from cyncsim.simulator.fleet import CyncFleet
    from cyncsim.simulator.transport import ReliableTransport

__all__: list[str] = []


def _seeds(root: int) -> SeedTree:
    """The session's SeedTree (imported on use: see the module comment)."""
    from cyncsim.replay.seeds import SeedTree

    return SeedTree(root)


NIGHTLY_MARKERS = ("chaos_probabilistic", "soak")
_SEED_KEY = pytest.StashKey[int]()

FleetFactory = Callable[..., Awaitable[list["CyncDeviceSimulator"]]]
DialingFleetFactory = Callable[..., Awaitable["CyncFleet"]]
ReplayFactory = Callable[..., Awaitable["DiffReport"]]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cyncsim", "cyncsim simulated Cync devices")
    group.addoption(
        "--cync-seed", type=int, default=None, help="root seed of every simulated device/fault"
    )
    group.addoption(
        "--cync-captures",
        default=None,
        metavar="DIR",
        help="folder of real captures (default: $CYNCSIM_CAPTURES or ../shared/captures)",
    )
    group.addoption("--cync-model", default=None, metavar="FILE", help="model file to simulate")
    group.addoption(
        "--cync-nightly",
        action="store_true",
        help="also run chaos_probabilistic and soak tests",
    )
    group.addoption(
        "--cync-soak-hours",
        type=float,
        default=None,
        help="soak duration in hours (the spec's full run: 9 = 1 h warm-up + 8 h)",
    )
    group.addoption(
        "--cync-time-scale",
        type=float,
        default=0.05,
        help="factor applied to every learned delay of simulated devices (default 0.05)",
    )
    add_replay_options(group, parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: deterministic chaos test (seeded or patterned)")
    config.addinivalue_line(
        "markers", "chaos_probabilistic: statistical chaos test, run with -m or --cync-nightly"
    )
    config.addinivalue_line("markers", "soak: long memory/soak test, run with -m or --cync-nightly")
    seed = config.getoption("--cync-seed")
    worker = getattr(config, "workerinput", None)
    if seed is None and worker is not None and "cync_seed" in worker:
        seed = int(worker["cync_seed"])
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 31)
    config.stash[_SEED_KEY] = seed
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistSeed(seed), "cyncsim-xdist-seed")
    config.addinivalue_line("markers", "cync_replay: a capture replayed (--cync-replay)")
    configure_replay(config)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    settings = parent.config.stash.get(SETTINGS_KEY, None)
    if settings is not None and file_path.resolve() in settings.files:
        return CaptureFile.collector(parent, file_path)
    return None


class _XdistSeed:
    """Hands the controller's seed to every xdist worker."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["cync_seed"] = self.seed


def _asked_for(config: pytest.Config, marker: str) -> bool:
    expr = config.getoption("-m", default="") or ""
    return bool(config.getoption("--cync-nightly")) or (
        marker in expr and f"not {marker}" not in expr
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        marks = [m for m in NIGHTLY_MARKERS if item.get_closest_marker(m) is not None]
        if marks and not all(_asked_for(config, m) for m in marks):
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.stash[_SEED_KEY]
    return f"cyncsim: seed {seed} (reproduce with --cync-seed={seed}), captures {_captures(config)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        seed = item.config.stash[_SEED_KEY]
        report.sections.append(
            (
                "cyncsim",
                f"seed {seed}; this test's seed {_seeds(seed).seed(item.nodeid)};"
                f" reproduce with --cync-seed={seed}",
            )
        )


def _captures(config: pytest.Config) -> Path:
    opt = config.getoption("--cync-captures")
    if opt:
        return Path(opt)
    from cyncsim.captures import shared_captures_dir

    return shared_captures_dir()


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def cync_seed(request: pytest.FixtureRequest) -> int:
    """The session's root seed."""
    return request.config.stash[_SEED_KEY]


@pytest.fixture
def cync_test_seed(request: pytest.FixtureRequest, cync_seed: int) -> int:
    """This test's seed, derived from the root seed and the test's node id."""
    return _seeds(cync_seed).seed(request.node.nodeid)


@pytest.fixture(scope="session")
def cync_captures_dir(request: pytest.FixtureRequest) -> Path:
    """Folder of the real captures (``--cync-captures``, $CYNCSIM_CAPTURES, ../shared)."""
    return _captures(request.config)


@pytest.fixture(scope="session")
def cync_time_scale(request: pytest.FixtureRequest) -> float:
    scale: float = request.config.getoption("--cync-time-scale")
    return scale


@pytest.fixture(scope="session")
def cync_model(request: pytest.FixtureRequest) -> DeviceModel:
    """The model simulated devices follow: ``--cync-model FILE`` or the shipped default.

    Override it by defining a fixture of the same name in your conftest.py.
    """
    from cyncsim.replay.model import DeviceModel

    path = request.config.getoption("--cync-model")
    if path:
        return DeviceModel.load(path)
    from cyncsim.captures import load_default_model

    return load_default_model()


@pytest.fixture
def cync_chaos() -> Callable[..., ChaosConfig]:
    """Factory: ``cync_chaos(packet_loss_rate=0.2, ...)`` -> a validated ChaosConfig."""
    from cyncsim.replay.chaos import ChaosConfig

    def make(**fields: Any) -> ChaosConfig:
        return ChaosConfig.from_dict(fields)

    return make


def _device_id(seed: int, index: int) -> bytes:
    return random.Random(_seeds(seed).seed(f"device/{index}")).randbytes(4)


@pytest_asyncio.fixture
async def cync_fleet(
    cync_model: DeviceModel, cync_test_seed: int, cync_time_scale: float
) -> AsyncIterator[FleetFactory]:
    """Factory: ``await cync_fleet(n, **kwargs)`` -> n started listening devices.

    Each device gets its own id (or ``device_ids=[...]``) and seed; other keyword arguments
    go to CyncDeviceSimulator (``chaos_config=``, ``time_scale=`` ...).  All
    devices are stopped at teardown, the last started first.
    """
    from cyncsim.simulator.device import CyncDeviceSimulator

    started: list[CyncDeviceSimulator] = []

    async def make(n: int, **kwargs: Any) -> list[CyncDeviceSimulator]:
        ids = kwargs.pop("device_ids", None)
        model = kwargs.pop("model", cync_model)
        kwargs.setdefault("time_scale", cync_time_scale)
        out = []
        for i in range(n):
            index = len(started)
            dev = CyncDeviceSimulator(
                ids[i] if ids else _device_id(cync_test_seed, index),
                model=model,
                seed=_seeds(cync_test_seed).seed(f"sim/{index}"),
                **kwargs,
            )
            await dev.start()
            started.append(dev)
            out.append(dev)
        return out

    yield make
    for dev in reversed(started):
        await dev.stop()


@pytest_asyncio.fixture
async def cync_device(cync_fleet: FleetFactory) -> CyncDeviceSimulator:
    """One started listening device (stopped after the test)."""
    (dev,) = await cync_fleet(1)
    return dev


@pytest_asyncio.fixture
async def cync_transport(
    cync_device: CyncDeviceSimulator, cync_test_seed: int
) -> AsyncIterator[ReliableTransport]:
    """A ReliableTransport connected to ``cync_device``, handshake done."""
    from cyncsim.simulator.transport import ReliableTransport

    transport = ReliableTransport(
        "127.0.0.1", cync_device.port, seed=_seeds(cync_test_seed).seed("transport")
    )
    await transport.connect()
    await transport.handshake()
    yield transport
    await transport.close()


# ------------------------------------------------------------------ dialling fleets, replay


@pytest_asyncio.fixture
async def cync_dialing_fleet(
    cync_model: DeviceModel, cync_test_seed: int, cync_time_scale: float
) -> AsyncIterator[DialingFleetFactory]:
    """Factory for controller authors: ``await cync_dialing_fleet(n, connect=(host, port))``.

    Returns a started CyncFleet of ``n`` devices dialling the controller at host:port, each
    from its own loopback source address (``tls=True`` for TLS, or an SSLContext), once every
    device has had its hello (0x23) answered with a 0x28.  After ``timeout`` s (default 10)
    it raises CyncError naming the devices still waiting and what for.  Other keyword
    arguments go to CyncFleet (``chaos_config=``, ``identities=``, ``record=`` ...).  Later
    fleets of one test continue the identities and source addresses of the earlier ones.  At
    teardown the fleets stop in reverse order, each one's devices in reverse order.
    """
    from cyncsim.simulator.fleet import CyncFleet, generate_members

    fleets: list[CyncFleet] = []

    async def make(
        n: int,
        *,
        connect: tuple[str, int],
        tls: Any = False,
        timeout: float = 10.0,  # noqa: ASYNC109
        **kwargs: Any,
    ) -> CyncFleet:
        kwargs.setdefault("model", cync_model)
        kwargs.setdefault("time_scale", cync_time_scale)
        kwargs.setdefault("seed", _seeds(cync_test_seed).seed("dialing-fleet"))
        if "members" not in kwargs:  # later fleets of a test continue the identities
            taken = sum(len(f) for f in fleets)
            kwargs["members"] = generate_members(
                taken + n,
                model=kwargs["model"],
                seed=kwargs["seed"],
                **{
                    k: kwargs.pop(k)
                    for k in ("identities", "source_hosts", "mesh_size")
                    if k in kwargs
                },
            )[taken:]
        fleet = CyncFleet(n, **kwargs)
        fleets.append(fleet)
        await _dial_and_wait(fleet, connect, tls, timeout)
        return fleet

    yield make
    for fleet in reversed(fleets):
        for dev in reversed(fleet.devices):
            await dev.stop()
        await fleet.stop()


async def _dial_and_wait(
    fleet: CyncFleet,
    connect: tuple[str, int],
    tls: Any,
    timeout: float,  # noqa: ASYNC109
) -> None:
    """Dial, then wait until every device's hello was answered; name the stragglers."""
    import asyncio
    import contextlib

    from cyncsim.replay.errors import CyncError

    host, port = connect
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with contextlib.suppress(CyncError):  # the devices without a connection are named below
        await fleet.connect(host, port, tls, timeout=timeout)
    left = max(deadline - loop.time(), 0.0)
    await asyncio.gather(
        *(d.wait_handshaken(left) for d in fleet.devices if d.connected),
        return_exceptions=True,
    )
    waiting = [d for d in fleet.devices if not d.handshaken]
    if not waiting:
        return

    def why(dev: Any) -> str:
        if dev.connected:
            return "hello not answered"
        err = f": {dev.last_error}" if dev.last_error is not None else ""
        return f"no connection{err}"

    shown = ", ".join(f"device-{d.device_id.hex()} ({why(d)})" for d in waiting[:10])
    more = f" and {len(waiting) - 10} more" if len(waiting) > 10 else ""
    raise CyncError(
        f"cync_dialing_fleet: {len(waiting)} of {len(fleet.devices)} devices still waiting "
        f"after {timeout} s for {host}:{port} to answer their hello: {shown}{more}",
        reason="timeout",
    )


@pytest.fixture
def cync_replay_target() -> Target | None:
    """Where replay items send their traffic: override it in your conftest.py.

    Return or yield ``(host, port, tls)`` after starting the controller under test (or, for
    ``--cync-replay-side=controller``, the device under test); it may be an async fixture.
    This default returns None, and every replay item then fails saying so.
    """
    return None


@pytest.fixture
def cync_replay(cync_test_seed: int, cync_captures_dir: Path) -> ReplayFactory:
    """``verdict = await cync_replay(capture, host, port, side="devices", **options)``.

    Replays a capture against host:port (cyncsim.simulator.replay.replay_capture; options:
    ``tls=``, ``time_scale=``, ``max_gap=``, ``devices=``, ``record=``, ``tolerance=``) and
    returns its DiffReport: ``verdict.conformant``, ``verdict.findings``.  A capture given by
    bare file name is looked for in ``cync_captures_dir``; a missing capture skips the test.
    """

    async def run(
        capture: str | Path, host: str, port: int, *, side: Side = "devices", **options: Any
    ) -> DiffReport:
        from cyncsim.simulator.replay import replay_capture

        path = _capture_path(capture, cync_captures_dir)
        options.setdefault("seed", cync_test_seed)
        return await replay_capture([path], host, port, side=side, **options)

    return run


def _capture_path(capture: str | Path, captures_dir: Path) -> Path:
    """``capture`` itself, or a bare file name in ``captures_dir``; skips when absent."""
    path = Path(capture)
    if not path.exists() and len(path.parts) == 1:
        path = captures_dir / path
    if not path.is_file():
        pytest.skip(f"capture {capture} not found (looked in {path.parent})")
    return path
