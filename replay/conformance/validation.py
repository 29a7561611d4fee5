# The report of `cyncsim validate`: real held-out latencies against N simulated replays.
#
# Strategy: pure.  The held-out part of each source is paired by the conformance pairing
# (``diff`` against a reference learned from that same part, exactly what a replay of it
# compares with), which gives the real latency sample of every request kind and who answers
# it.  A replay's DiffReport (simulator/replay.py) carries the simulated samples of the kinds
# its peer under test answers (timing rows' candidate values) and the structural findings
# about that peer.  ``assemble`` pools real and simulated samples per kind (variant, answering
# role, request, response) over the sources, runs the predictive check (predictive.py) and
# counts the error findings per kind over the runs (the structural diff: every error finding
# but the replay's own timing verdicts, which judge against the held-out part's model).  Directions:
# ``controller`` replays the held-out controller side against a simulated device (kinds the
# device answers); ``devices`` replays the held-out devices against the simulated cloud (kinds
# the cloud answers).  Heartbeat idle rows are not request kinds and are left out.  The
# training parts are paired the same way (``train_counts``): how many samples the model
# learned each kind from, which the predictive check's reference distances take into account.
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cyncsim.replay.capture import CaptureResult
from cyncsim.replay.capture.model import CLOUD, DEVICE
from cyncsim.replay.conformance.diff import diff
from cyncsim.replay.conformance.predictive import (
    ALPHA,
    MIN_SAMPLES,
    PredictiveCheck,
    can_reject,
)
from cyncsim.replay.conformance.predictive import predictive_check as check_kind
from cyncsim.replay.conformance.reference import Reference
from cyncsim.replay.conformance.report import DiffReport

__all__ = [
    "DIRECTIONS",
    "TIMING_FINDINGS",
    "KindKey",
    "KindResult",
    "RealSamples",
    "ValidationReport",
    "assemble",
    "real_samples",
    "train_counts",
]

# direction -> the role its peer under test answers as
DIRECTIONS: dict[str, str] = {"controller": DEVICE, "devices": CLOUD}
KindKey = tuple[str, str, str, str]  # (variant, role, request, response)
# the replays' timing verdicts (against the held-out part's own model) are not structure
TIMING_FINDINGS = frozenset({"latency", "heartbeat"})


@dataclass(slots=True)
class RealSamples:
    """The held-out part of one source: its reference and real samples per kind."""

    source: str
    result: CaptureResult
    reference: Reference
    samples: dict[KindKey, list[float]]

    def roles(self) -> set[str]:
        return {key[1] for key, v in self.samples.items() if v}


def real_samples(source: str, held: CaptureResult, variant: str | None = None) -> RealSamples:
    """Pair one source's held-out part as a replay of it will be judged.  ``variant``: the
    source's variant seen on the whole capture (a held-out part may lack the packets that
    tell a local server from the cloud); its kinds are labelled with it."""
    ref = Reference.from_result(held)
    report = diff(ref, held)
    samples: dict[KindKey, list[float]] = {}
    for row in report.timing:
        if row.request == "heartbeat":
            continue
        key = (variant or row.variant, row.role, row.request, row.response)
        samples.setdefault(key, []).extend(row.cand_values)
    return RealSamples(source, held, ref, samples)


def train_counts(parts: Sequence[tuple[CaptureResult, str | None]]) -> dict[KindKey, int]:
    """Per kind, the samples the training parts (each with its capture's variant) hold,
    paired as the held-out parts are."""
    counts: Counter[KindKey] = Counter()
    for part, variant in parts:
        for key, values in real_samples("training", part, variant).samples.items():
            counts[key] += len(values)
    return dict(counts)


@dataclass(frozen=True, slots=True)
class KindResult:
    key: KindKey
    direction: str
    check: PredictiveCheck
    findings: dict[str, int]  # error finding kind -> count over all runs
    runs_with_findings: int

    @property
    def label(self) -> str:
        return f"{self.key[2]} -> {self.key[3]}"

    @property
    def verdict(self) -> str:
        return self.check.verdict

    @property
    def structure(self) -> str:
        if not self.findings:
            return "ok"
        what = ", ".join(f"{n} {k}" for k, n in sorted(self.findings.items()))
        return f"{what} ({self.runs_with_findings} runs)"

    def as_dict(self) -> dict[str, object]:
        variant, role, request, response = self.key
        return {
            "kind": self.label,
            "variant": variant,
            "answered_by": role,
            "request": request,
            "response": response,
            "direction": self.direction,
            **self.check.as_dict(),
            "structural_findings": self.findings,
            "runs_with_findings": self.runs_with_findings,
        }


@dataclass(slots=True)
class ValidationReport:
    training: list[str]
    held_out: list[str]
    split: float | None
    runs: int
    seed: int
    max_gap: float | None
    kinds: list[KindResult] = field(default_factory=list)
    directions: dict[str, dict[str, object]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    runtime_s: float = 0.0
    # the replays' event-loop timer lateness in ms: median of the runs' p50, worst run's p99
    loop_lateness: dict[str, float] = field(default_factory=dict)

    @property
    def plausible(self) -> bool:
        return all(k.verdict != "implausible" for k in self.kinds)

    @property
    def verdict(self) -> str:
        return "plausible" if self.plausible else "implausible"

    def as_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "training": [Path(s).name for s in self.training],
            "held_out": [Path(s).name for s in self.held_out],
            "split": self.split,
            "runs": self.runs,
            "seed": self.seed,
            "max_gap_s": self.max_gap,
            "rule": {
                "alpha": ALPHA,
                "min_samples": MIN_SAMPLES,
                "plausible": "KS rank p >= alpha (the envelopes are information)",
                "reference": "each run vs n_train values drawn from the other runs pooled "
                "(leave one out when the kind has no training samples)",
                "ks_rank_can_reject": can_reject(self.runs),
            },
            "kinds": [k.as_dict() for k in self.kinds],
            "directions": self.directions,
            "notes": self.notes,
            "runtime_s": round(self.runtime_s, 1),
            "loop_lateness_ms": self.loop_lateness,
        }


def assemble(
    report: ValidationReport,
    reals: Sequence[RealSamples],
    runs: Mapping[tuple[str, str], Sequence[DiffReport]],
    n_train: Mapping[KindKey, int] | None = None,
) -> ValidationReport:
    """Fill ``report`` from the real samples and the replays, keyed (source, direction).
    ``n_train``: per kind, the training samples the model learned it from (``train_counts``);
    the predictive check's reference distances then carry that sample size (predictive.py)."""
    real: dict[KindKey, list[float]] = defaultdict(list)
    sim: dict[KindKey, list[list[float]]] = {}
    found: dict[KindKey, Counter[str]] = defaultdict(Counter)
    flagged: dict[KindKey, set[tuple[str, int]]] = defaultdict(set)
    direction_of: dict[KindKey, str] = {}
    for rs in reals:
        for direction, role in DIRECTIONS.items():
            reps = runs.get((rs.source, direction))
            if reps is None:
                continue
            mine = {k: v for k, v in rs.samples.items() if k[1] == role}
            for key, values in mine.items():
                real[key].extend(values)
                direction_of[key] = direction
                per_run = sim.setdefault(key, [[] for _ in reps])
                if len(per_run) < len(reps):
                    per_run.extend([] for _ in range(len(reps) - len(per_run)))
            for i, rep in enumerate(reps):
                rows = {(r.role, r.request, r.response): r for r in rep.timing}
                for key in mine:
                    row = rows.get(key[1:])
                    if row is not None:
                        sim[key][i].extend(row.cand_values)
                for f in rep.findings:
                    if f.severity != "error" or f.kind in TIMING_FINDINGS:
                        continue
                    for key in mine:
                        if f.request == key[2]:
                            found[key][f.kind] += 1
                            flagged[key].add((rs.source, i))
                            break
                    else:
                        bucket = report.directions.setdefault(direction, {})
                        other = bucket.setdefault("other_findings", {})
                        assert isinstance(other, dict)
                        other[f.kind] = other.get(f.kind, 0) + 1
    for key in sorted(real, key=lambda k: (direction_of[k], k)):
        report.kinds.append(
            KindResult(
                key,
                direction_of[key],
                check_kind(real[key], sim[key], n_train=(n_train or {}).get(key) or None),
                dict(found[key]),
                len(flagged[key]),
            )
        )
    return report
