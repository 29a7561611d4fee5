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
# held-out part alone may lack an exchange its engine needs, e.g. 0x73 -> 0x7B).
# Timing precision is what is measured, so runs never share an event loop: each replay runs
# with its simulator in a worker process of its own (asyncio.run there; a forkserver pool, a
# fresh process per replay, the held-out part and the model pickled to it, the DiffReport
# back; terminated on an error or a cancellation), at most ``jobs`` at
# once (default: every run at once: a replay waits on the captured schedule nearly all the
# time, ~1 s of CPU in minutes, so 40 processes fit 2 cores, while fewer at once multiply the
# runtime by the held-out part's length).  Runs start STAGGER_S apart, so that the CPU of
# their starts and ends (pairing, the verdict) and their identical schedules do not meet.
# Each worker samples its loop's timer lateness (a LAG_PROBE_S sleep, how late it woke) while
# its replay runs; the report gives the runs' median p50 and worst p99, the check that no
# run's latencies were bent by a busy loop (not the max: the replay's own pairing before its
# traffic and verdict after it block the probe, harmlessly, once each).  A direction whose
# held-out part has no request kind its peer answers is not run.  Times are the capture's
# own (time scale 1); only idle gaps longer than ``max_gap`` are shortened (a gap with a
# request waiting for its answer never is: replay/session.py), so every latency is measured
# at real speed.
from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from cyncsim.replay.capture import CaptureResult, read_capture
from cyncsim.replay.conformance import DiffReport
from cyncsim.replay.conformance.predictive import ALPHA, MIN_RUNS_TO_REJECT, can_reject
from cyncsim.replay.conformance.split import split_by_time
from cyncsim.replay.conformance.validation import (
    DIRECTIONS,
    TIMING_FINDINGS,
    RealSamples,
    ValidationReport,
    assemble,
    real_samples,
    train_counts,
)
from cyncsim.replay.errors import CyncError
from cyncsim.replay.model import DeviceModel, learn_model
from cyncsim.replay.model.learn import source_variant
from cyncsim.replay.seeds import SeedTree, draw_root
from cyncsim.replay.session import build_plan
from cyncsim.simulator.cloud import CyncCloudSimulator
from cyncsim.simulator.device import CyncDeviceSimulator
from cyncsim.simulator.replay import replay_capture

__all__ = [
    "DEFAULT_MAX_GAP",
    "DEFAULT_RUNS",
    "DEFAULT_SPLIT",
    "LAG_PROBE_S",
    "STAGGER_S",
    "validate",
]

DEFAULT_SPLIT = 0.67
DEFAULT_RUNS = 20  # the fewest whose KS rank can reject at 0.05 (p >= 1/(N+1))
DEFAULT_MAX_GAP = 5.0  # seconds: idle gaps longer than this are shortened to it
STAGGER_S = 0.5
LAG_PROBE_S = 0.05  # the worker's loop-lateness probe sleeps this long between samples


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
    """Learn, replay the held-out part ``runs`` times each way, and judge every kind.

    The replays run in worker processes (forkserver): a script calling this needs the
    ``if __name__ == "__main__":`` guard, as multiprocessing does."""
    if runs < 2:
        raise CyncError(f"{runs} runs: need at least 2", reason="usage")
    if max_gap is not None and not max_gap > 0:
        raise CyncError(f"max gap {max_gap}: need seconds > 0", reason="usage")
    started = time.monotonic()
    root = seed if seed is not None else draw_root("validate")
    train_parts = _read(captures)
    held: list[tuple[str, CaptureResult, str]] = []  # source, held-out part, its variant
    training = CaptureResult()
    learned: list[tuple[CaptureResult, str | None]] = []  # each training part, its variant
    if holdout:
        for part in train_parts:
            training.extend(part)
            learned.append((part, source_variant(part.flows)))
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
            learned.append((cut.training, source_variant(part.flows)))
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
    if not can_reject(runs):
        report.notes.append(f"{runs} runs: the KS rank cannot reject (p >= 1/{runs + 1} = "
                            f"{1 / (runs + 1):.3f} > {ALPHA:g}); use {MIN_RUNS_TO_REJECT} "
                            "or more")  # fmt: skip
    jobs_run: list[tuple[tuple[str, str], _Job]] = []
    seeds = SeedTree(root)
    for rs in reals:
        for direction, role in DIRECTIONS.items():
            name = Path(rs.source).name
            if role not in rs.roles():
                report.notes.append(f"{name}: no request kind the {role} answers is held out; "
                                    f"the {direction} side was not replayed")  # fmt: skip
                continue
            for i in range(runs):
                tree = seeds.child(f"validate/{name}/{direction}/{i}")
                job = _Job(rs, direction, model, tree.seed("peer"), tree.seed("replay"), max_gap)
                jobs_run.append(((rs.source, direction), job))
    done: dict[tuple[str, str], list[DiffReport]] = {}
    lags: list[_Lag] = []
    if jobs_run:
        results = await _run_all([job for _, job in jobs_run], jobs or len(jobs_run))
        for (key, _), (rep, lag) in zip(jobs_run, results, strict=True):
            done.setdefault(key, []).append(rep)
            lags.append(lag)
    if lags:
        report.loop_lateness = {
            "p50_median": round(float(np.median([lag.p50 for lag in lags])) * 1000, 3),
            "p99_worst": round(max(lag.p99 for lag in lags) * 1000, 3),
        }
    for (source, direction), reps in done.items():
        report.directions.setdefault(direction, {})[Path(source).name] = {
            "structurally_conformant_runs": sum(1 for r in reps if not _structural(r)),
            "runs": len(reps),
        }
    assemble(report, reals, done, train_counts(learned))
    report.runtime_s = time.monotonic() - started
    return report


def _structural(report: DiffReport) -> list[str]:
    """The replay's error findings but its own timing verdicts."""
    return [f.kind for f in report.findings
            if f.severity == "error" and f.kind not in TIMING_FINDINGS]  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Job:
    """One replay, as pickled to its worker process."""

    rs: RealSamples
    direction: str
    model: DeviceModel
    peer_seed: int
    replay_seed: int
    max_gap: float | None


@dataclass(frozen=True, slots=True)
class _Lag:
    """The timer lateness of a worker's event loop while its replay ran (seconds)."""

    p50: float
    p99: float


async def _run_all(jobs: list[_Job], at_once: int) -> list[tuple[DiffReport, _Lag]]:
    """Every job in a fresh worker process, at most ``at_once`` at a time, started STAGGER_S
    apart; on an error or a cancellation the workers are terminated (no replay outlives it)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    loop = asyncio.get_running_loop()
    pool = ctx.Pool(processes=min(at_once, len(jobs)), maxtasksperchild=1)

    async def one(k: int, job: _Job) -> tuple[DiffReport, _Lag]:
        await asyncio.sleep(STAGGER_S * k)  # staggered start (schedule, not synchronisation)
        fut: asyncio.Future[tuple[DiffReport, _Lag] | _Failed] = loop.create_future()

        def settle(value: object, error: bool) -> None:
            if fut.done():
                return
            if error:
                assert isinstance(value, BaseException)
                fut.set_exception(value)
            else:
                fut.set_result(value)  # type: ignore[arg-type]

        pool.apply_async(
            _in_process, (job,),
            callback=lambda v: loop.call_soon_threadsafe(settle, v, False),
            error_callback=lambda e: loop.call_soon_threadsafe(settle, e, True),
        )  # fmt: skip
        out = await fut
        if isinstance(out, _Failed):
            raise CyncError(out.message, reason=out.reason)
        return out

    tasks = [asyncio.create_task(one(k, job)) for k, job in enumerate(jobs)]
    try:
        results = list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        pool.terminate()
        raise
    pool.close()
    return results


@dataclass(frozen=True, slots=True)
class _Failed:
    """A CyncError raised in a worker (its reason would not survive pickling)."""

    message: str
    reason: str


def _in_process(job: _Job) -> tuple[DiffReport, _Lag] | _Failed:
    """The worker process: one replay in an event loop of its own."""
    try:
        return asyncio.run(_run(job))
    except CyncError as exc:
        return _Failed(str(exc), exc.reason)


async def _lag_probe(samples: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + LAG_PROBE_S
        await asyncio.sleep(LAG_PROBE_S)
        samples.append(loop.time() - asked)


async def _run(job: _Job) -> tuple[DiffReport, _Lag]:
    """One replay of one source's held-out part against a fresh simulator."""
    rs, model = job.rs, job.model
    variants = {key[0] for key in rs.samples}
    variant = next(iter(variants)) if len(variants) == 1 else None
    if variant is not None and variant not in model.variants:
        variant = None
    peer: CyncDeviceSimulator | CyncCloudSimulator
    if job.direction == "controller":
        plan = build_plan(rs.result, rs.reference, "controller")
        peer = CyncDeviceSimulator(
            plan.peers[0].device_id, model=model, seed=job.peer_seed, variant=variant
        )
    else:
        peer = CyncCloudSimulator(model, seed=job.peer_seed, variant=variant)
    await peer.start()
    samples: list[float] = []
    probe = asyncio.create_task(_lag_probe(samples))
    try:
        side: Literal["devices", "controller"] = (
            "controller" if job.direction == "controller" else "devices"
        )
        report = await replay_capture(
            rs.result, "127.0.0.1", peer.port, side=side, max_gap=job.max_gap,
            seed=job.replay_seed, answer_model=model,
        )  # fmt: skip
    finally:
        probe.cancel()
        await peer.stop()
    lag = np.asarray(samples or [0.0], dtype=float)
    return report, _Lag(float(np.median(lag)), float(np.percentile(lag, 99)))
