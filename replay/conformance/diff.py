# diff(reference, candidate) -> DiffReport: the whole conformance comparison, as data.
#
# Strategy: group the candidate's flows by source file, find each source's setup variant
# (real cloud or local server, from the peer's behaviour) and the reference variant to hold
# it against; then per flow run the structure checks (structure.py) and the request/response
# pairing with its field checks (pairing.py); pool the latency samples per (variant, request,
# response) and the heartbeat idle times per variant for the timing comparison (timing.py);
# finally list coverage: which of the reference's request kinds the candidate exercised and
# which kinds it sent that the reference never has.
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from cyncsim.replay.capture import CaptureResult, read_capture
from cyncsim.replay.capture.model import Flow
from cyncsim.replay.conformance.pairing import Sample, pair_flow
from cyncsim.replay.conformance.reference import Reference, load_reference, other_side
from cyncsim.replay.conformance.report import (
    ConformanceFinding,
    CoverageRow,
    DiffReport,
    Tolerance,
    finding,
)
from cyncsim.replay.conformance.structure import capture_findings, check_structure
from cyncsim.replay.conformance.timing import heartbeat_row, latency_rows
from cyncsim.replay.describe import request_key
from cyncsim.replay.errors import CaptureError
from cyncsim.replay.model.learn import source_variant

__all__ = ["diff", "diff_files"]

_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def diff(
    reference: Reference,
    candidate: CaptureResult,
    tolerance: Tolerance | None = None,
) -> DiffReport:
    """Compare candidate captures with a reference; every deviation comes back as data."""
    tol = tolerance or Tolerance()
    report = DiffReport(list(reference.sources), list(candidate.sources), tol)
    by_source: dict[str, list[Flow]] = defaultdict(list)
    for flow in candidate.flows:
        if flow.kind == "cync":
            by_source[flow.source].append(flow)
    if not by_source:
        raise CaptureError(
            ", ".join(candidate.sources) or "candidate",
            "no decodable Cync traffic in the candidate",
            reason="no_traffic",
        )
    samples: list[Sample] = []
    findings: list[ConformanceFinding] = []
    flows_by_variant: dict[str, list[Flow]] = defaultdict(list)
    for source, flows in by_source.items():
        wanted = source_variant(flows)
        variant, note = reference.pick_variant(wanted)
        report.variants[source] = variant
        if note:
            report.notes.append(f"{Path(source).name}: {note}")
        flows_by_variant[variant].extend(flows)
        for flow in flows:
            report.packets += len(flow.packets)
            findings.extend(check_structure(flow, reference, variant))
            got, found = pair_flow(flow, reference, variant)
            samples.extend(got)
            findings.extend(found)
    for flow in candidate.flows:
        if flow.kind == "tls":
            findings.append(
                finding(
                    "capture_note", flow.id, None, flow.start, "TLS flow: encrypted, not compared"
                )
            )
    findings.extend(capture_findings(candidate, reference))
    variants = sorted(flows_by_variant)
    rows, timing_findings = latency_rows(reference, variants, samples, tol)
    report.timing.extend(rows)
    findings.extend(timing_findings)
    for v in variants:
        row, hb = heartbeat_row(reference, v, flows_by_variant[v], tol)
        if row is not None:
            report.timing.append(row)
        findings.extend(hb)
    report.coverage = _coverage(reference, variants, candidate)
    flow_order = {f.id: n for n, f in enumerate(candidate.flows)}
    findings.sort(
        key=lambda f: (
            _SEVERITY_ORDER[f.severity],
            flow_order.get(f.flow, len(flow_order)),
            -1 if f.index is None else f.index,
        )
    )
    report.findings = findings
    return report


def _coverage(ref: Reference, variants: list[str], candidate: CaptureResult) -> list[CoverageRow]:
    cand: Counter[tuple[str, str]] = Counter()
    for flow in candidate.flows:
        for fp in flow.packets:
            cand[(fp.sender, request_key(fp.packet))] += 1
    rows: list[CoverageRow] = []
    listed: set[tuple[str, str]] = set()
    for v in variants:
        for ex in ref.exchanges(v):
            key = (other_side(ex.role), ex.request)
            if key in listed:
                continue
            listed.add(key)
            # a by-type exchange ("0x73") is exercised by any kind of that type
            n = sum(c for (s, k), c in cand.items() if s == key[0] and _covers(ex.request, k))
            rows.append(
                CoverageRow(
                    key[0], ex.request, ex.requests, n, "exercised" if n else "not_exercised"
                )
            )
    for (sender, kind), n in sorted(cand.items()):
        if not ref.known(sender, kind):
            rows.append(CoverageRow(sender, kind, 0, n, "new"))
    return rows


def _covers(pattern: str, key: str) -> bool:
    return key == pattern or (":" not in pattern and key.split(":", 1)[0] == pattern)


def diff_files(
    reference: Iterable[str | Path],
    candidate: Iterable[str | Path],
    tolerance: Tolerance | None = None,
) -> DiffReport:
    """Load a reference (model file or captures) and candidate captures, then diff them."""
    ref = load_reference(reference)
    result = CaptureResult()
    for path in candidate:
        result.extend(read_capture(path))
    return diff(ref, result, tolerance)
