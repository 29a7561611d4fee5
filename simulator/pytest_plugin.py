# The cyncsim pytest plugin (entry point ``pytest11``): fixtures, markers and options.
#
# Strategy: keep it light.  Options and markers are registered here; fixtures import the
# simulator lazily, are factories where several objects are wanted, and tear down in reverse
# order.  One session seed (``--cync-seed``, else drawn and printed) is split per test by
# node id, so a failing test is reproduced by its seed, under pytest-xdist too (the
# controller hands its seed to the workers).  ``chaos_probabilistic`` and ``soak`` tests are
# deselected unless asked for with ``-m`` or ``--cync-nightly``.
from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from cyncsim.replay.chaos import ChaosConfig
    from cyncsim.replay.model import DeviceModel
    from cyncsim.replay.seeds import SeedTree
    from cyncsim.simulator.device import CyncDeviceSimulator
    from cyncsim.simulator.transport import ReliableTransport

__all__: list[str] = []


def _seeds(root: int) -> SeedTree:
    """The session's SeedTree (imported on use: see the module comment)."""
    from cyncsim.replay.seeds import SeedTree

    return SeedTree(root)


NIGHTLY_MARKERS = ("chaos_probabilistic", "soak")
_SEED_KEY = pytest.StashKey[int]()

FleetFactory = Callable[..., Awaitable[list["CyncDeviceSimulator"]]]


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
