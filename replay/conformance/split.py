# Splitting captures by time into a training part and a held-out part (`cyncsim validate`).
#
# Strategy: pure.  Each source (capture file) is cut at its own time: the cut lies at
# ``fraction`` of the span from its first to its last packet.  Packets before the cut train,
# packets at or after it are held out, flow by flow, so a connection that straddles the cut
# becomes two flows with the same id, one on each side (the held-out one starts without its
# hello; the replay's devices and cloud open their own connection anyway).  Whole exchanges
# stay together: the cut moves on to the first instant when no request of that source is
# waiting for its answer (so a burst of commands in flight is not cut in two), and an answer
# still sent after the moved cut to a request before it belongs to training (it is part of
# that request's latency sample); the held-out part only holds exchanges whose request came
# after the cut.  Requests and answers are paired by the conformance pairing (the rule the
# learner and `cyncsim diff` use) against a model learned from the packets before the cut.
# Reader findings go with their time (a finding without a time, e.g. a TLS flow, with
# training).  ``bytes_seen`` of a split flow is recounted from its packets' encodings.
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

from cyncsim.replay.capture.model import CLOUD, DEVICE, CaptureResult, Flow, FlowPacket
from cyncsim.replay.conformance.pairing import Sample, pair_flow
from cyncsim.replay.conformance.reference import Reference
from cyncsim.replay.errors import CyncError
from cyncsim.replay.model import learn_model
from cyncsim.replay.model.learn import source_variant

__all__ = ["TimeSplit", "cut_times", "quiet_after", "split_at", "split_by_time"]


@dataclass(frozen=True, slots=True)
class TimeSplit:
    training: CaptureResult
    held_out: CaptureResult
    cuts: dict[str, float]  # source -> cut time (Unix seconds)
    carried: int  # answers after the cut kept in training with their request


def cut_times(result: CaptureResult, fraction: float) -> dict[str, float]:
    """Per source, the time at ``fraction`` of its span (first to last packet)."""
    if not 0.0 < fraction < 1.0:
        raise CyncError(f"split fraction {fraction} is not between 0 and 1", reason="usage")
    spans: dict[str, tuple[float, float]] = {}
    for flow in result.flows:
        for fp in flow.packets:
            lo, hi = spans.get(flow.source, (fp.ts, fp.ts))
            spans[flow.source] = (min(lo, fp.ts), max(hi, fp.ts))
    return {src: lo + fraction * (hi - lo) for src, (lo, hi) in spans.items()}


def _flow_part(flow: Flow, packets: list[FlowPacket]) -> Flow:
    seen: dict[str, int] = {DEVICE: 0, CLOUD: 0}
    for fp in packets:
        seen[fp.sender] += len(fp.packet.encode())
    return Flow(flow.id, flow.source, flow.exact, flow.kind, flow.device_id, packets, seen,
                flow.endpoints)  # fmt: skip


def split_at(
    result: CaptureResult,
    cuts: Mapping[str, float],
    carry: Mapping[str, Set[int]] | None = None,
) -> tuple[CaptureResult, CaptureResult]:
    """(before, after): each flow's packets before its source's cut, and the rest.

    ``carry``: flow id -> indices of packets after the cut that stay before it (answers to
    requests sent before the cut).  A source without a cut stays whole in ``before``.
    """
    before = CaptureResult(list(result.sources))
    after = CaptureResult(list(result.sources))
    keep = carry or {}
    for flow in result.flows:
        cut = cuts.get(flow.source, float("inf"))
        extra = keep.get(flow.id, frozenset())
        early = [fp for i, fp in enumerate(flow.packets) if fp.ts < cut or i in extra]
        late = [fp for i, fp in enumerate(flow.packets) if not (fp.ts < cut or i in extra)]
        if early or not late:
            before.flows.append(_flow_part(flow, early) if late else flow)
        if late:
            after.flows.append(_flow_part(flow, late))
    for f in result.findings:
        cut = cuts.get(f.source, float("inf"))
        (before if f.ts is None or f.ts < cut else after).findings.append(f)
    return before, after


def split_by_time(result: CaptureResult, fraction: float) -> TimeSplit:
    """Training = each source's first ``fraction`` of time, the cut moved on to the first
    instant no request is waiting for its answer; held out = the rest.  Raises CyncError when
    one side is empty."""
    cuts = cut_times(result, fraction)
    naive, _ = split_at(result, cuts)
    if not any(f.kind == "cync" and f.packets for f in naive.flows):
        raise CyncError("nothing to learn before the split", reason="no_packets")
    ref = Reference.from_model(learn_model(naive), list(naive.sources))
    pairs: dict[str, list[tuple[Flow, Sample]]] = defaultdict(list)
    if ref.variants:
        by_source: dict[str, list[Flow]] = defaultdict(list)
        for flow in result.flows:
            if flow.kind == "cync" and flow.packets:
                by_source[flow.source].append(flow)
        for source, flows in by_source.items():
            variant, _ = ref.pick_variant(source_variant(flows))
            for flow in flows:
                pairs[source].extend((flow, s) for s in pair_flow(flow, ref, variant)[0])
    carry: dict[str, set[int]] = defaultdict(set)
    for source, got in pairs.items():
        cuts[source] = quiet_after(cuts[source], [(s.ts - s.latency, s.ts) for _, s in got])
        cut = cuts[source]
        for flow, s in got:
            if flow.packets[s.request_index].ts < cut <= s.ts:
                carry[flow.id].add(s.response_index)
    training, held = split_at(result, cuts, carry)
    if not any(f.kind == "cync" and f.packets for f in held.flows):
        raise CyncError("nothing is held out after the split", reason="no_packets")
    return TimeSplit(training, held, cuts, sum(len(v) for v in carry.values()))


def quiet_after(cut: float, busy: Sequence[tuple[float, float]]) -> float:
    """The first instant at or after ``cut`` outside every (request, answer) span of ``busy``
    (touching spans chain): an exchange in flight at the cut is not split."""
    for start, end in sorted(busy):
        if start > cut:
            break
        if end >= cut:
            cut = math.nextafter(end, math.inf)
    return cut
