# The verdict of a replay: a `cyncsim diff` report narrowed to the peer under test.
#
# Strategy: pure.  A replay records both sides of the live session and diffs the recording
# with a reference learned from the same capture (replay.conformance.diff), so the findings,
# timing rows, coverage and exit codes are exactly those of `cyncsim diff`.  Half of that
# recording is the replay's own traffic, which says nothing about the peer, so the report is
# narrowed: a finding is kept when it blames the peer under test (the sender of the packet it
# points at; for "unanswered", the side that owed the answer), a timing row when the peer is
# the one answering, a coverage row when the peer is the sender.  Where the reference holds
# too few samples of a kind for the KS comparison (a capture with one accepted connection has
# one 0x23 -> 0x28), the medians are compared instead, failing beyond a factor SINGLE_FACTOR,
# so an answer five times slower still shows.  Heartbeat idle is the replayed devices' own on
# the devices side; on the controller side it is the target's, but it is only judged when the
# replay ran at time scale 1 with no gap compressed (otherwise it is left out, with a note).
from __future__ import annotations

import dataclasses

from cyncsim.replay.capture import CaptureResult
from cyncsim.replay.capture.model import CLOUD, DEVICE, FlowPacket
from cyncsim.replay.conformance import (
    ALWAYS,
    ConformanceFinding,
    DiffReport,
    Reference,
    Sample,
    TimingRow,
    pair_flow,
)
from cyncsim.replay.conformance.report import finding
from cyncsim.replay.describe import request_key

__all__ = ["ANSWER_WAIT_FACTOR", "MIN_WAIT_S", "SINGLE_FACTOR", "judge"]

ANSWER_WAIT_FACTOR = 5.0  # a missing answer is due after this many x the reference p99 ...
MIN_WAIT_S = 1.0  # ... and at least this long
SINGLE_FACTOR = 3.0  # few reference samples: fail when the medians differ by more than this


def judge(
    report: DiffReport,
    candidate: CaptureResult,
    ref: Reference,
    side: str,
    *,
    time_scale: float = 1.0,
    shortened: int = 0,
    shortened_heartbeats: int = 0,
) -> DiffReport:
    """Narrow ``report`` (the diff of the recorded replay) to the peer under test."""
    judged = CLOUD if side == "devices" else DEVICE
    ours = DEVICE if judged == CLOUD else CLOUD
    senders = {f.id: [fp.sender for fp in f.packets] for f in candidate.flows}

    def blame(f: ConformanceFinding) -> str | None:
        if f.index is None or f.flow not in senders or f.index >= len(senders[f.flow]):
            return None
        sender = senders[f.flow][f.index]
        if f.kind == "unanswered":
            return CLOUD if sender == DEVICE else DEVICE
        return sender

    heartbeat_judged = side == "controller" and time_scale == 1.0 and not shortened
    kept: list[ConformanceFinding] = []
    dropped = 0
    for f in report.findings:
        who = blame(f)
        if f.kind == "heartbeat" and not heartbeat_judged:
            dropped += 1
        elif who is None or who == judged:
            kept.append(f)
        else:
            dropped += 1
    kept.extend(_unanswered(report, candidate, ref, judged, kept))
    rows: list[TimingRow] = []
    samples = _samples(candidate, ref, report)
    for row in report.timing:
        if row.request == "heartbeat":
            if heartbeat_judged:
                rows.append(row)
            continue
        if row.role != judged:
            continue
        row, extra = _few_samples(row, report, samples)
        rows.append(row)
        kept.extend(extra)
    order = {"error": 0, "warning": 1, "info": 2}
    kept.sort(key=lambda f: order[f.severity])  # stable: diff's order within a severity
    report.findings = kept
    report.timing = rows
    report.coverage = [c for c in report.coverage if c.sender != ours]
    peer = "controller" if side == "devices" else "device"
    report.notes.append(
        f"replay --side {side}: the {peer} under test is judged; the replayed {ours} side's "
        f"own packets are not ({dropped} findings about them left out)"
    )
    if shortened or time_scale != 1.0:
        how = []
        if time_scale != 1.0:
            how.append(f"time scale {time_scale:g}")
        if shortened:
            how.append(
                f"{shortened} idle gaps cut by --max-gap ({shortened_heartbeats} before a "
                "heartbeat)"
            )
        report.notes.append(
            f"timing of the replayed side changed ({', '.join(how)}): heartbeat idle is not "
            "judged; answer latencies of the peer are"
        )
    return report


def _unanswered(
    report: DiffReport,
    candidate: CaptureResult,
    ref: Reference,
    judged: str,
    have: list[ConformanceFinding],
) -> list[ConformanceFinding]:
    """Requests of the replayed side that the reference always answers and the peer never
    did, while it went on sending for longer than ANSWER_WAIT_FACTOR x the reference's p99
    latency (at least MIN_WAIT_S) after them.  The diff's own rule waits 10 s of capture
    time, longer than a compressed replay lasts.  Answers pair with requests in order."""
    asker = DEVICE if judged == CLOUD else CLOUD
    known = {(f.flow, f.index) for f in have if f.kind == "unanswered"}
    out: list[ConformanceFinding] = []
    for flow in candidate.flows:
        variant = report.variants.get(flow.source)
        if flow.kind != "cync" or variant is None or not flow.packets:
            continue
        last_peer = max((fp.ts for fp in flow.packets if fp.sender == judged), default=None)
        if last_peer is None:
            continue
        keys = [request_key(fp.packet) for fp in flow.packets]
        for i, fp in enumerate(flow.packets):
            if fp.sender != asker or (flow.id, i) in known:
                continue
            ex = ref.exchange(keys[i], judged, variant)
            if ex is None or ex.request != keys[i]:
                continue
            for rm in ex.responses:
                if rm.share < ALWAYS:
                    continue
                wait = max(MIN_WAIT_S, ANSWER_WAIT_FACTOR * rm.latency.quantile(0.99))
                if fp.ts + wait > last_peer or _answered(flow.packets, keys, i, rm.key, judged):
                    continue
                out.append(
                    finding(
                        "unanswered", flow.id, i, fp.ts,
                        f"{keys[i]} got no {rm.key} although the reference always answers it "
                        f"and the {judged} kept sending for {last_peer - fp.ts:.2f} s "
                        f"(waited {wait:.2f} s: {ANSWER_WAIT_FACTOR:g} x the reference p99)",
                        expected=rm.key, actual="no answer", packet_hex=fp.packet.encode().hex(" "),
                        request_index=i, request=keys[i],
                    )
                )  # fmt: skip
                break
    return out


def _answered(packets: list[FlowPacket], keys: list[str], i: int, answer: str, by: str) -> bool:
    """Whether request ``i`` got its ``answer`` when answers pair with requests in order."""
    queue: list[int] = []
    for j, fp in enumerate(packets):
        if keys[j] == keys[i] and fp.sender != by:
            queue.append(j)
        elif keys[j] == answer and fp.sender == by and queue and queue.pop(0) == i:
            return True
    return False


def _samples(candidate: CaptureResult, ref: Reference, report: DiffReport) -> list[Sample]:
    out: list[Sample] = []
    for flow in candidate.flows:
        if flow.kind != "cync":
            continue
        variant = report.variants.get(flow.source)
        if variant is None:
            continue
        out.extend(pair_flow(flow, ref, variant)[0])
    return out


def _few_samples(
    row: TimingRow, report: DiffReport, samples: list[Sample]
) -> tuple[TimingRow, list[ConformanceFinding]]:
    """A row the KS test left insufficient for want of reference samples: compare medians."""
    tol = report.tolerance
    if (
        row.verdict != "insufficient"
        or row.basis == "idle"
        or not 0 < row.ref_count < tol.min_samples
        or not row.cand
        or not row.ref
        or "#" in row.response
    ):
        return row, []
    r50, c50 = row.ref["p50"], row.cand["p50"]
    if r50 <= 0 or c50 <= 0:
        return row, []
    ratio = c50 / r50
    fail = ratio > SINGLE_FACTOR or ratio < 1 / SINGLE_FACTOR
    note = (
        f"{row.ref_count} reference sample(s): medians compared, failing beyond a factor "
        f"{SINGLE_FACTOR:g} (ratio {ratio:.2f})"
    )
    row = dataclasses.replace(
        row, verdict="fail" if fail else "pass", method="median", distance=round(ratio, 4),
        note=note,
    )  # fmt: skip
    if not fail:
        return row, []
    key = (row.request, row.response, 0)
    got = [s for s in samples if (s.request, s.response, s.occurrence) == key]
    if not got:
        return row, []
    slower = ratio > 1
    worst = max(got, key=lambda s: s.latency) if slower else min(got, key=lambda s: s.latency)
    return row, [
        finding(
            "latency", worst.flow, worst.response_index, worst.ts,
            f"{row.label} latency {'slower' if slower else 'faster'} than the reference "
            f"({note}; candidate p50 {c50 * 1000:.1f} ms vs reference {r50 * 1000:.1f} ms); "
            f"worst sample {worst.latency * 1000:.1f} ms",
            expected=" ".join(f"{k} {v * 1000:.1f} ms" for k, v in row.ref.items()),
            actual=" ".join(f"{k} {v * 1000:.1f} ms" for k, v in row.cand.items()),
            request_index=worst.request_index, request=row.request,
        )
    ]  # fmt: skip
