# Capture files as pytest items: one item per capture x replayable device.
#
# Strategy: pytest's non-Python collection (pytest_collect_file -> CaptureFile -> ReplayItem).
# The item is a pytest.Function whose test function is `_replay_test`, so it gets fixtures the
# ordinary way: the user's `cync_replay_target` (overridden in conftest.py, yielding
# (host, port, tls) after starting the controller under test) and `cync_test_seed`.  The replay
# runs on the event loop the target fixture ran on (pytest-asyncio keeps one runner per loop
# scope), so a controller started by an async fixture is alive and served while devices dial
# it.  Items share nothing: each gets its target from its own fixture and dials from its own
# loopback addresses, so they are safe under pytest-xdist.  A nonconformant verdict fails with
# an assertion-style message (the first error findings with their packet index and the
# differing bytes in [brackets], replay.conformance.render); a CyncError (nothing listening, TLS
# failure) fails with its one line.  Private module: the plugin (simulator/pytest_plugin.py)
# registers the hooks and fixtures.
from __future__ import annotations

import asyncio
import glob
import inspect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import pytest

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr

    from cyncsim.replay.conformance import DiffReport

__all__ = [
    "CAPTURE_SUFFIXES",
    "NO_TARGET",
    "SETTINGS_KEY",
    "CaptureFile",
    "ReplayFailed",
    "ReplayItem",
    "ReplaySettings",
    "Side",
    "Target",
    "add_replay_options",
    "configure_replay",
    "expand_paths",
    "run_on_target_loop",
]

Side = Literal["devices", "controller"]
Target = tuple[str, int, bool]
CAPTURE_SUFFIXES = (".txt", ".pcap", ".pcapng", ".cap", ".log")
TARGET_FIXTURE = "cync_replay_target"
NO_TARGET = (
    "no replay target: define a fixture `cync_replay_target` in your conftest.py that starts "
    "the controller under test (or the device, with --cync-replay-side=controller) and "
    "returns or yields (host, port, tls), for example\n\n"
    "    @pytest_asyncio.fixture\n"
    "    async def cync_replay_target():\n"
    "        server = await start_my_controller(port=0)\n"
    '        yield "127.0.0.1", server.port, False\n'
    "        await server.stop()"
)


@dataclass(frozen=True)
class ReplaySettings:
    """What every replay item of one session shares (from options and the ini file)."""

    files: frozenset[Path]  # captures to collect, resolved
    side: Side = "devices"
    time_scale: float = 1.0
    max_gap: float | None = None
    max_findings: int = 3
    record_dir: Path | None = None


SETTINGS_KEY = pytest.StashKey[ReplaySettings]()


class ReplayFailed(Exception):
    """A nonconformant verdict; ``str()`` is the assertion-style message."""

    def __init__(self, message: str, report: DiffReport | None = None) -> None:
        super().__init__(message)
        self.report = report


def expand_paths(paths: Iterable[str], base: Path, *, what: str, must_exist: bool) -> list[Path]:
    """Files named by ``paths`` (relative to ``base``): globs expanded, folders searched
    recursively for capture files (CAPTURE_SUFFIXES).  A path that names nothing raises
    pytest.UsageError when ``must_exist``."""
    out: list[Path] = []
    for raw in paths:
        pattern = str(base / raw) if not Path(raw).is_absolute() else raw
        hits = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(raw) else [pattern]
        hits = [h for h in hits if Path(h).exists()]
        if not hits and must_exist:
            raise pytest.UsageError(f"{what} {raw}: no such file or directory")
        for hit in hits:
            p = Path(hit).resolve()
            if p.is_dir():
                out.extend(
                    sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in CAPTURE_SUFFIXES)
                )
            elif p.is_file():
                out.append(p)
    return list(dict.fromkeys(out))


class CaptureFile(pytest.File):
    """One capture: an item per replayable device (replay.session.replay_units)."""

    @classmethod
    def collector(cls, parent: pytest.Collector, path: Path) -> CaptureFile:
        """The collector of ``path``; a capture outside the rootdir is known by its file name
        (pytest would give it an empty node id), so item ids read ``capture.txt::device-id``."""
        try:
            path.resolve().relative_to(parent.config.rootpath)
        except ValueError:
            return cls.from_parent(parent, path=path, nodeid=path.name)
        return cls.from_parent(parent, path=path)

    def collect(self) -> Iterator[pytest.Item]:
        from cyncsim.replay.errors import CyncError
        from cyncsim.replay.session import replay_units

        try:
            units = replay_units(self.path)
        except CyncError as exc:
            raise self.CollectError(f"{self.path}: {exc}") from None
        if not units:
            yield ReplayItem.from_parent(self, name="no-devices", device_id=None)
            return
        for unit in units:
            yield ReplayItem.from_parent(self, name=unit.name, device_id=unit.device_id)

    class CollectError(Exception):
        """A capture that cannot be read: one line, no traceback."""

    def repr_failure(  # type: ignore[override]
        self, excinfo: pytest.ExceptionInfo[BaseException]
    ) -> str | TerminalRepr:
        if isinstance(excinfo.value, self.CollectError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


def _replay_test(request: pytest.FixtureRequest, cync_replay_target: Target | None) -> None:
    """The test function behind every ReplayItem (it only hands over to the item)."""
    item = request.node
    assert isinstance(item, ReplayItem)
    item.replay(request, cync_replay_target)


class ReplayItem(pytest.Function):
    """One device of one capture replayed against ``cync_replay_target``."""

    def __init__(self, *, device_id: bytes | None, **kwargs: Any) -> None:
        super().__init__(callobj=_replay_test, **kwargs)
        self.device_id = device_id
        self.add_marker("cync_replay")

    @classmethod
    def from_parent(  # type: ignore[override]
        cls, parent: pytest.Collector, *, name: str, device_id: bytes | None
    ) -> ReplayItem:
        return super().from_parent(parent, name=name, device_id=device_id)

    def replay(self, request: pytest.FixtureRequest, target: Target | None) -> None:
        if self.device_id is None:
            pytest.skip(f"{self.path.name}: no devices to replay (no decodable device packets)")
        if target is None:
            raise ReplayFailed(NO_TARGET)
        host, port, tls = target
        settings = self.config.stash[SETTINGS_KEY]
        seed = cast(int, request.getfixturevalue("cync_test_seed"))
        record = None
        if settings.record_dir is not None:
            settings.record_dir.mkdir(parents=True, exist_ok=True)
            record = settings.record_dir / f"{self.path.stem}-{self.name}.pcapng"

        async def run() -> DiffReport:
            from cyncsim.simulator.replay import replay_capture

            return await replay_capture(
                [self.path],
                host,
                port,
                side=settings.side,
                tls=tls,
                time_scale=settings.time_scale,
                max_gap=settings.max_gap,
                seed=seed,
                record=record,
                devices=[cast(bytes, self.device_id)],
            )

        report = run_on_target_loop(request, run())
        if not report.conformant:
            raise ReplayFailed(self.failure_message(report, host, port), report)

    def failure_message(self, report: DiffReport, host: str, port: int) -> str:
        from cyncsim.replay.conformance.render import render_failure

        settings = self.config.stash[SETTINGS_KEY]
        head = (
            f"{self.path.name}::{self.name} replayed against {host}:{port} "
            f"(side {settings.side}, time scale {settings.time_scale:g})"
        )
        return head + "\n" + render_failure(report, max_findings=settings.max_findings)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.path.name}::{self.name}"

    def repr_failure(  # type: ignore[override]
        self, excinfo: pytest.ExceptionInfo[BaseException]
    ) -> str | TerminalRepr:
        from cyncsim.replay.errors import CyncError

        if isinstance(excinfo.value, ReplayFailed):
            return str(excinfo.value)
        if isinstance(excinfo.value, CyncError):
            return f"{self.path.name}::{self.name}: {excinfo.value}"
        return super().repr_failure(excinfo)


def _target_loop_scope(request: pytest.FixtureRequest) -> str:
    """The loop scope pytest-asyncio ran ``cync_replay_target`` in (as it decides it)."""
    item = cast(pytest.Function, request.node)
    defs = item._fixtureinfo.name2fixturedefs.get(TARGET_FIXTURE, ())
    default_test_scope = str(request.config.getini("asyncio_default_test_loop_scope") or "function")
    if not defs:
        return default_test_scope
    fixturedef = defs[-1]
    func = fixturedef.func
    if not (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)):
        return default_test_scope
    scope = getattr(func, "_loop_scope", None)
    if scope is None:
        scope = request.config.getini("asyncio_default_fixture_loop_scope") or None
    if scope is None or scope == "match_fixture":
        scope = fixturedef.scope
    return str(scope)


def run_on_target_loop(request: pytest.FixtureRequest, coro: Any) -> DiffReport:
    """Run ``coro`` on the event loop the target fixture's controller lives on.

    pytest-asyncio runs async fixtures in one asyncio.Runner per loop scope (fixtures
    ``_<scope>_scoped_runner``); running the replay in the same runner keeps the controller's
    server and the replaying devices on one loop.  This is the one place that knows that.
    """
    runner = request.getfixturevalue(f"_{_target_loop_scope(request)}_scoped_runner")
    assert isinstance(runner, asyncio.Runner)
    return cast("DiffReport", runner.run(coro))


# ------------------------------------------------------------------ options
def add_replay_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    """The replay options and ini values (registered by the plugin's pytest_addoption)."""
    group.addoption(
        "--cync-replay",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH",
        help="capture files (or folders of them) to replay as test items, one per device",
    )
    group.addoption(
        "--cync-replay-side",
        choices=("devices", "controller"),
        default=None,
        help="replay the captured devices against a controller (default), or the controller",
    )
    group.addoption(
        "--cync-replay-time-scale",
        type=float,
        default=None,
        help="factor applied to the captured times of a replay (default: the ini value, 1)",
    )
    group.addoption(
        "--cync-replay-max-gap",
        type=float,
        default=None,
        metavar="SECONDS",
        help="compress idle gaps of a replay to at most this long",
    )
    group.addoption(
        "--cync-replay-record",
        default=None,
        metavar="DIR",
        help="record each replay item's session to DIR/<capture>-<device>.pcapng",
    )
    parser.addini(
        "cync_replay", type="args", default=[], help="globs of captures to replay as test items"
    )
    parser.addini("cync_replay_side", default="devices", help="devices (default) or controller")
    parser.addini("cync_replay_time_scale", default="1", help="time scale of replays")
    parser.addini("cync_replay_max_gap", default="", help="idle gap compression (seconds)")


def _ini_float(config: pytest.Config, name: str) -> float | None:
    raw = str(config.getini(name)).strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise pytest.UsageError(f"ini option {name} = {raw!r} is not a number") from None


def configure_replay(config: pytest.Config) -> None:
    """Resolve the captures to replay and add them to what pytest collects.

    ``--cync-replay`` paths replace the default collection (testpaths) unless test paths
    are given too; the ini globs add to the default collection, never to explicit paths.
    """
    named = expand_paths(
        config.getoption("--cync-replay"),
        config.invocation_params.dir,
        what="--cync-replay",
        must_exist=True,
    )
    from_ini = expand_paths(
        config.getini("cync_replay"), config.rootpath, what="cync_replay", must_exist=False
    )
    explicit = config.args_source == pytest.Config.ArgsSource.ARGS
    if named:
        config.args = [*config.args, *map(str, named)] if explicit else list(map(str, named))
    elif from_ini and not explicit:
        config.args = [*config.args, *map(str, from_ini)]
    side = config.getoption("--cync-replay-side") or str(config.getini("cync_replay_side"))
    if side not in ("devices", "controller"):
        raise pytest.UsageError(f"cync_replay_side = {side!r}: devices or controller")
    scale = config.getoption("--cync-replay-time-scale")
    if scale is None:
        scale = _ini_float(config, "cync_replay_time_scale")
    if scale is not None and not scale > 0:
        raise pytest.UsageError(f"replay time scale {scale} must be > 0")
    gap = config.getoption("--cync-replay-max-gap")
    if gap is None:
        gap = _ini_float(config, "cync_replay_max_gap")
    record = config.getoption("--cync-replay-record")
    config.stash[SETTINGS_KEY] = ReplaySettings(
        files=frozenset([*named, *from_ini]),
        side=cast(Side, side),
        time_scale=1.0 if scale is None else scale,
        max_gap=gap,
        record_dir=Path(record).resolve() if record else None,
    )
