# replay_capture: drive one side of a recorded session against a live peer, record the
# session, and return the verdict as the same DiffReport `cyncsim diff` gives.
#
# Strategy: the pure planner (replay/session.py) says what the replayed side sent on its own
# and when; this module only moves bytes and time.  Devices side: every captured device is a
# CyncDeviceSimulator dialling the controller from its own loopback address (127.0.0.2, ...)
# with its captured id and auth code; its engine is the device engine learned from the same
# capture with its own spontaneous traffic turned off (_AnswerOnly), so it only answers, and
# the plan's steps (hello retries, heartbeats, 0x43, 0x83 reports ...) go out at their replay
# times through the simulator's send path.  Controller side: a CyncCloudSimulator learned from
# the capture dials the listening device and answers it; the captured controller's own packets
# (0xA3, commands) go out at their times, rewritten to the target's device id and mesh nodes
# as soon as its hello and mesh table have shown them.  Both sides record into a text
# recording that is read back and diffed (replay/verdict.py narrows it to the peer).  The
# end: after the last step, the replay waits until the peer has been quiet for QUIET_S (at
# most DRAIN_S), so answers still on their way are in the verdict.
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from cyncsim.replay.capture import CaptureResult, read_capture
from cyncsim.replay.capture.model import CLOUD, DEVICE, Sender
from cyncsim.replay.conformance import DiffReport, Reference, Tolerance, diff
from cyncsim.replay.engine import DeviceEngine
from cyncsim.replay.engine.actions import Action
from cyncsim.replay.errors import CyncError
from cyncsim.replay.model import DeviceModel
from cyncsim.replay.protocol import PacketType
from cyncsim.replay.seeds import SeedTree, draw_root
from cyncsim.replay.session import (
    PeerPlan,
    ReplayError,
    SessionPlan,
    build_plan,
    mesh_nodes,
    node_map,
    target_rewrite,
    with_counter,
)
from cyncsim.replay.verdict import judge
from cyncsim.simulator.cloud import CyncCloudSimulator
from cyncsim.simulator.device import CyncDeviceSimulator, device_ssl_context
from cyncsim.simulator.ports import check_loopback
from cyncsim.simulator.record import Recorder

__all__ = ["DRAIN_S", "QUIET_S", "ReplayError", "replay_capture"]

QUIET_S = 1.0  # the peer said nothing for this long after the last step: the replay ends
DRAIN_S = 15.0  # ... or this long after the last step at most
CONNECT_TIMEOUT_S = 10.0
_MAX_SOURCE_HOSTS = 250  # 127.0.0.2 .. 127.0.0.251


class _AnswerOnly(DeviceEngine):
    """The learned device engine without its own timers: it answers, and the replay plan
    sends everything the device sent on its own (hello retries, heartbeats, reports)."""

    def poll(self, now: float) -> list[Action]:
        return []

    def next_deadline(self) -> float:
        return float("inf")


async def replay_capture(
    captures: Sequence[str | Path] | CaptureResult,
    host: str,
    port: int,
    *,
    side: Literal["devices", "controller"] = "devices",
    tls: bool = False,
    time_scale: float = 1.0,
    max_gap: float | None = None,
    seed: int | None = None,
    record: str | Path | None = None,
    devices: Sequence[bytes] | None = None,
    tolerance: Tolerance | None = None,
    peer_time_scale: float | None = None,
    answer_model: DeviceModel | None = None,
) -> DiffReport:
    """Replay, record the peer under test, and return the verdict as the same DiffReport
    `cyncsim diff` returns (findings, timing rows, coverage, verdict, conformant).

    ``peer_time_scale``: the peer is a simulator running at this time scale (e.g. `cyncsim
    serve --time-scale 0.2`, with the same ``time_scale`` here): the recorded session's clock
    is divided by it before the verdict, so the peer's latencies are judged at real speed.
    ``captures`` may also be captures already read (e.g. the held-out part of a time split).
    ``answer_model``: the model the replayed side answers the peer from (default: the one
    learned from the captures, which is also the reference of the verdict).
    """
    if peer_time_scale is not None and not 0 < peer_time_scale < float("inf"):
        raise ReplayError(f"peer time scale {peer_time_scale} must be > 0", reason="usage")
    if side not in ("devices", "controller"):
        raise ReplayError(f"side {side!r} is not 'devices' or 'controller'", reason="usage")
    if not captures:
        raise ReplayError("no capture given", reason="usage")
    check_loopback(host)
    if isinstance(captures, CaptureResult):
        result, sources = captures, list(captures.sources) or ["capture"]
    else:
        result, sources = CaptureResult(), [str(p) for p in captures]
        for path in captures:
            result.extend(read_capture(path))
    if not any(f.kind == "cync" for f in result.flows):
        names = ", ".join(Path(p).name for p in sources)
        raise ReplayError(f"{names}: no devices to replay (no decodable Cync traffic)",
                          reason="no_devices")  # fmt: skip
    ref = Reference.from_result(result)
    plan = build_plan(result, ref, side, devices=devices, time_scale=time_scale, max_gap=max_gap)
    if side == "devices" and len(plan.peers) > _MAX_SOURCE_HOSTS:
        raise ReplayError(f"{len(plan.peers)} devices: at most {_MAX_SOURCE_HOSTS} can be "
                          "replayed at once (pass devices=)", reason="usage")  # fmt: skip
    ctx = device_ssl_context() if tls else None
    await _probe(host, port, ctx)
    root = seed if seed is not None else draw_root("replay")
    with tempfile.TemporaryDirectory(prefix="cyncsim-replay-") as tmp:
        stem = Path(sources[0]).stem
        text = Path(record) if record is not None and str(record).endswith(".txt") else None
        path = text if text is not None else Path(tmp) / f"replay-{stem}.txt"
        recorder = Recorder(path)
        answers = answer_model if answer_model is not None else ref.model
        if plan.variant not in answers.variants:  # an answer model learned elsewhere
            plan.variant = answers.variants[0] if answers.variants else plan.variant
        if side == "devices":
            await _run_devices(plan, answers, host, port, ctx, time_scale, root, recorder)
        else:
            await _run_controller(plan, answers, host, port, ctx, time_scale, root, recorder)
        recorder.close()
        session = read_capture(path)
        if record is not None and text is None:
            _copy_recording(session, Path(record), side)
    if not any(f.kind == "cync" for f in session.flows):
        raise ReplayError(f"{host}:{port}: no traffic was exchanged with the peer",
                          reason="no_traffic")  # fmt: skip
    scale = time_scale
    if peer_time_scale is not None and peer_time_scale != 1.0:
        _rescale(session, peer_time_scale)
        scale = time_scale / peer_time_scale
    report = diff(ref, session, tolerance)
    if peer_time_scale is not None and peer_time_scale != 1.0:
        report.notes.append(
            f"the peer runs at time scale {peer_time_scale:g}: the session's clock was divided "
            "by it before the verdict"
        )
    return judge(
        report, session, ref, side, time_scale=scale, shortened=plan.shortened,
        shortened_heartbeats=plan.shortened_heartbeats,
    )  # fmt: skip


def _rescale(session: CaptureResult, factor: float) -> None:
    """Stretch the session's clock by 1 / ``factor`` (from its first packet)."""
    starts = [f.packets[0].ts for f in session.flows if f.packets]
    if not starts:
        return
    t0 = min(starts)
    for flow in session.flows:
        flow.packets = [
            dataclasses.replace(fp, ts=t0 + (fp.ts - t0) / factor) for fp in flow.packets
        ]


# ---------------------------------------------------------------------- checks
async def _probe(host: str, port: int, ctx: ssl.SSLContext | None) -> None:
    """One connection (and TLS handshake) to the target first: a clear error, not a hang."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=host if ctx is not None else None
            ),
            CONNECT_TIMEOUT_S,
        )
    except ssl.SSLError as exc:
        raise ReplayError(f"TLS handshake with {host}:{port} failed: {exc.reason or exc}",
                          reason="tls") from None  # fmt: skip
    except TimeoutError:
        raise ReplayError(f"no answer from {host}:{port} within {CONNECT_TIMEOUT_S:g} s",
                          reason="connect_failed") from None  # fmt: skip
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ReplayError(f"nothing listening at {host}:{port} ({why})",
                          reason="connect_failed") from None  # fmt: skip
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


# ---------------------------------------------------------------------- devices side
async def _run_devices(
    plan: SessionPlan,
    model: DeviceModel,
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    time_scale: float,
    root: int,
    recorder: Recorder,
) -> None:
    seeds = SeedTree(root)
    sims: list[CyncDeviceSimulator] = []
    for k, peer in enumerate(plan.peers):
        sim = CyncDeviceSimulator(
            peer.device_id,
            model=model,
            seed=seeds.seed(f"replay/{peer.name}"),
            time_scale=time_scale,
            variant=plan.variant,
            auth_code=peer.auth_code or None,
            mesh_node=peer.mesh_node,
            record=recorder,
            source_host=f"127.0.0.{k + 2}",
        )
        old = sim.engine
        sim.engine = _AnswerOnly(
            model, old.device_id, old.auth_code, mesh_node=old.mesh_node, state=old.state,
            variant=plan.variant, seed=sim.seeds, time_scale=time_scale,
        )  # fmt: skip
        sims.append(sim)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        await asyncio.gather(
            *(
                _device_steps(sim, peer, host, port, ctx, t0)
                for sim, peer in zip(sims, plan.peers, strict=True)
            )
        )
        await _drain(lambda: sum(s.engine.stats.get("received", 0) for s in sims))
    finally:
        for sim in reversed(sims):
            await sim.stop()


async def _device_steps(
    sim: CyncDeviceSimulator,
    peer: PeerPlan,
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    t0: float,
) -> None:
    loop = asyncio.get_running_loop()
    hellos = 0
    for step in peer.steps:
        await _until(loop, t0 + step.at)
        if not sim.running:
            await sim.connect(host, port, ctx or False, timeout=CONNECT_TIMEOUT_S)
            if step.key == "0x23":
                hellos += 1
                continue  # the connection's own hello is this one
        if step.key == "0x23":
            hellos += 1
            if hellos == 1 or sim.engine.acked:
                continue  # answered: a device sends no more hellos
        data = step.data
        if step.data[0] == PacketType.REPORT:
            data = with_counter(data, sim.engine.counters.get("device:0x83", 1))
            sim.engine.counters["device:0x83"] = (
                sim.engine.counters.get("device:0x83", 1) + 1
            ) & 0xFFFF
        sim.send_raw(data)


# ---------------------------------------------------------------------- controller side
async def _run_controller(
    plan: SessionPlan,
    model: DeviceModel,
    host: str,
    port: int,
    ctx: ssl.SSLContext | None,
    time_scale: float,
    root: int,
    recorder: Recorder,
) -> None:
    peer = plan.peers[0]
    cloud = CyncCloudSimulator(
        model, seed=root, time_scale=time_scale, variant=plan.variant, record=recorder
    )
    loop = asyncio.get_running_loop()
    try:
        await cloud.dial(host, port, ctx, timeout=CONNECT_TIMEOUT_S)
        t0 = loop.time()
        try:
            await cloud.wait_for(
                lambda: bool(cloud.links) and cloud.links[-1].device_id is not None,
                CONNECT_TIMEOUT_S,
            )
        except CyncError:
            raise ReplayError(f"{host}:{port}: the device sent no 0x23 hello within "
                              f"{CONNECT_TIMEOUT_S:g} s", reason="handshake") from None  # fmt: skip
        link = cloud.links[-1]
        nodes: dict[int, int] = {}
        for step in peer.steps:
            await _until(loop, t0 + step.at)
            if not link.open:
                break
            if not nodes:
                nodes = _target_nodes(link.packets, peer)
            cloud.send_raw(target_rewrite(step.data, link.device_id, nodes), link.device_id)
        await _drain(lambda: len(cloud.seen))
    finally:
        await cloud.stop()


def _target_nodes(
    packets: Sequence[tuple[float, Sender, object]], peer: PeerPlan
) -> dict[int, int]:
    for _, sender, pkt in reversed(packets):
        if sender == DEVICE:
            found = mesh_nodes(pkt)  # type: ignore[arg-type]
            if found:
                return node_map(peer.nodes, peer.mesh_node, found)
    return {}


# ---------------------------------------------------------------------- time
async def _until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    """Wait for a step's replay time (the schedule itself, not a synchronisation)."""
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _drain(count: Callable[[], int]) -> None:
    """Wait until the peer has been quiet for QUIET_S (at most DRAIN_S)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DRAIN_S
    last, quiet_since = count(), loop.time()
    while loop.time() < end:
        await asyncio.sleep(0.05)
        now = count()
        if now != last:
            last, quiet_since = now, loop.time()
        elif loop.time() - quiet_since >= QUIET_S:
            return


def _copy_recording(session: CaptureResult, path: Path, side: str) -> None:
    """The session as pcapng (--record FILE with another suffix than .txt)."""
    rec = Recorder(path)
    rec.open()
    try:
        ours: Sender = DEVICE if side == "devices" else CLOUD
        for n, flow in enumerate(session.flows):
            if not flow.packets:
                continue
            conn = rec.connection(
                ours=ours, local=(f"127.0.0.{n % 250 + 2}", 40000 + n % 20000),
                peer=("127.0.0.1", 23779), we_dialled=True, ts=flow.packets[0].ts,
            )  # fmt: skip
            if conn is None:
                continue
            for fp in flow.packets:
                conn.data("out" if fp.sender == ours else "in", fp.packet.encode(), fp.ts)
            conn.closed(flow.packets[-1].ts)
    finally:
        rec.close()
