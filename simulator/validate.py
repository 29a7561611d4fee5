# validate: learn from a training part, replay the held-out part N times against simulators
# running that model, and say per request kind whether the real held-out latencies are
# plausible as one more run (replay/conformance/validation.py, predictive.py).
#
# Strategy: the training part is learned with the importer's learner (learn_model); the
# held-out part of each source is replayed with the replay machinery of `cyncsim replay`
# (simulator/replay.py, replay_capture) in two directions: its controller side against a
# CyncDeviceSimulator (the captured device the controller talked to most), its device side
# against a CyncCloudSimulator, both running the learned model and listening on 127.0.0.1
# with a free port.  Each run has its own seeds (SeedTree(root).child("validate/<source>/
# <direction>/<i>")); the replayed side answers the peer from the training model too (the
# held-out part alone may lack an exchange its engine needs, e.g. 0x73 -> 0x7B).  Runs go
# concurrently (at most ``jobs`` at once), their starts staggered by STAGGER_S so that the
# runs' identical schedules do not all fire in the same instant; a direction whose held-out
# part has no request kind its peer answers is not run.  Times are
# the capture's own (time scale 1); only idle gaps longer than ``max_gap`` are shortened (a
# gap with a request waiting for its answer never is: replay/session.py), so every latency is
# measured at real speed.
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from cyncsim.replay.capture import CaptureResult, read_capture
from cyncsim.replay.conformance import DiffReport
from cyncsim.replay.conformance.split import split_by_time
from cyncsim.replay.conformance.validation import (
    DIRECTIONS,
    TIMING_FINDINGS,
    RealSamples,
    ValidationReport,
    assemble,
    real_samples,
)
from cyncsim.replay.errors import CyncError
from cyncsim.replay.model import DeviceModel, learn_model
from cyncsim.replay.model.learn import source_variant
from cyncsim.replay.seeds import SeedTree, draw_root
from cyncsim.replay.session import build_plan
from cyncsim.simulator.cloud import CyncCloudSimulator
from cyncsim.simulator.device import CyncDeviceSimulator
from cyncsim.simulator.replay import replay_capture

__all__ = ["DEFAULT_MAX_GAP", "DEFAULT_RUNS", "DEFAULT_SPLIT", "STAGGER_S", "validate"]

DEFAULT_SPLIT = 0.67
DEFAULT_RUNS = 8
DEFAULT_MAX_GAP = 5.0  # seconds: idle gaps longer than this are shortened to it
STAGGER_S = 0.25


def _read(paths: Sequence[str | Path]) -> list[CaptureResult]:
    out = []
    for path in paths:
        result = read_capture(path)
        if not any(f.kind == "cync" and f.packets for f in result.flows):
            raise CyncError(f"{path}: no decodable Cync traffic", reason="no_packets")
        out.append(result)
    return out


async def validate(
    captures: Sequence[str | Path],
    *,
    holdout: Sequence[str | Path] = (),
    split: float = DEFAULT_SPLIT,
    runs: int = DEFAULT_RUNS,
    seed: int | None = None,
    max_gap: float | None = DEFAULT_MAX_GAP,
    jobs: int | None = None,
) -> ValidationReport:
    """Learn, replay the held-out part ``runs`` times each way, and judge every kind."""
    if runs < 2:
        raise CyncError(f"{runs} runs: need at least 2", reason="usage")
    if max_gap is not None and not max_gap > 0:
        raise CyncError(f"max gap {max_gap}: need seconds > 0", reason="usage")
    started = time.monotonic()
    root = seed if seed is not None else draw_root("validate")
    train_parts = _read(captures)
    held: list[tuple[str, CaptureResult, str]] = []  # source, held-out part, its variant
    training = CaptureResult()
    if holdout:
        for part in train_parts:
            training.extend(part)
        held = [(str(p), r, source_variant(r.flows))
                for p, r in zip(holdout, _read(holdout), strict=True)]  # fmt: skip
    else:
        for path, part in zip(captures, train_parts, strict=True):
            try:
                cut = split_by_time(part, split)
            except CyncError as exc:
                raise CyncError(f"{path}: {exc}", reason=exc.reason) from None
            training.extend(cut.training)
            held.append((str(path), cut.held_out, source_variant(part.flows)))
    model = learn_model(training)
    report = ValidationReport(
        [str(c) for c in captures],
        [str(p) for p in holdout] if holdout else [str(c) for c in captures],
        None if holdout else split,
        runs,
        root,
        max_gap,
    )
    reals = [real_samples(src, part, variant) for src, part, variant in held]
    tasks: dict[tuple[str, str], list[asyncio.Task[DiffReport]]] = {}
    gate = asyncio.Semaphore(jobs or runs * 2 * len(reals))
    seeds = SeedTree(root)
    order = 0
    for rs in reals:
        for direction, role in DIRECTIONS.items():
            name = Path(rs.source).name
            if role not in rs.roles():
                report.notes.append(f"{name}: no request kind the {role} answers is held out; "
                                    f"the {direction} side was not replayed")  # fmt: skip
                continue
            lst = tasks.setdefault((rs.source, direction), [])
            for i in range(runs):
                tree = seeds.child(f"validate/{name}/{direction}/{i}")
                lst.append(asyncio.create_task(
                    _run(rs, direction, model, tree, max_gap, gate, STAGGER_S * (order % runs))
                ))  # fmt: skip
                order += 1
    try:
        done = {key: list(await asyncio.gather(*ts)) for key, ts in tasks.items()}
    finally:
        for ts in tasks.values():
            for t in ts:
                t.cancel()
    for (source, direction), reps in done.items():
        report.directions.setdefault(direction, {})[Path(source).name] = {
            "structurally_conformant_runs": sum(1 for r in reps if not _structural(r)),
            "runs": len(reps),
        }
    assemble(report, reals, done)
    report.runtime_s = time.monotonic() - started
    return report


def _structural(report: DiffReport) -> list[str]:
    """The replay's error findings but its own timing verdicts."""
    return [f.kind for f in report.findings
            if f.severity == "error" and f.kind not in TIMING_FINDINGS]  # fmt: skip


async def _run(
    rs: RealSamples,
    direction: str,
    model: DeviceModel,
    tree: SeedTree,
    max_gap: float | None,
    gate: asyncio.Semaphore,
    delay: float,
) -> DiffReport:
    """One replay of one source's held-out part against a fresh simulator."""
    await asyncio.sleep(delay)  # staggered start (schedule, not synchronisation)
    variants = {key[0] for key in rs.samples}
    variant = next(iter(variants)) if len(variants) == 1 else None
    if variant is not None and variant not in model.variants:
        variant = None
    async with gate:
        peer: CyncDeviceSimulator | CyncCloudSimulator
        if direction == "controller":
            plan = build_plan(rs.result, rs.reference, "controller")
            peer = CyncDeviceSimulator(
                plan.peers[0].device_id, model=model, seed=tree.seed("peer"), variant=variant
            )
        else:
            peer = CyncCloudSimulator(model, seed=tree.seed("peer"), variant=variant)
        await peer.start()
        try:
            side: Literal["devices", "controller"] = (
                "controller" if direction == "controller" else "devices"
            )
            return await replay_capture(
                rs.result, "127.0.0.1", peer.port, side=side, max_gap=max_gap,
                seed=tree.seed("replay"), answer_model=model,
            )  # fmt: skip
        finally:
            await peer.stop()
