# What a conformance diff returns: findings, timing rows, coverage, as plain data.
#
# Strategy: every result is a frozen dataclass with ``as_dict()`` giving JSON-ready values
# (bytes as hex, seconds as milliseconds where a person reads them).  Finding kinds and their
# severities are declared once in KINDS; the verdict is derived, never stored twice:
# a candidate is nonconformant exactly when it has an error finding (timing failures are
# error findings too, so the timing table and the findings list always agree).
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "KINDS",
    "ConformanceFinding",
    "CoverageRow",
    "DiffReport",
    "Severity",
    "TimingRow",
    "Tolerance",
]

Severity = Literal["error", "warning", "info"]

# kind -> (default severity, what it means)
KINDS: dict[str, tuple[Severity, str]] = {
    "invalid_encoding": ("error", "a packet or bytes that do not follow the wire format"),
    "bad_checksum": ("error", "an inner frame whose checksum is wrong"),
    "stale_checksum_known": (
        "info",
        "a 0x83 carrying the previous report's checksum, as the reference firmware does",
    ),
    "known_defect": ("info", "a wire defect the reference captures have too"),
    "unknown_kind": ("warning", "a packet kind this side never sent in the reference"),
    "wrong_response": ("error", "a request answered with a kind the reference never answers"),
    "echo_mismatch": ("error", "a response field that must copy request bytes does not"),
    "counter_skip": ("error", "a per-sender counter that did not advance by one"),
    "constant_mismatch": ("error", "a field that is constant in the reference differs"),
    "response_order": ("error", "responses of one request not in the reference's order"),
    "unanswered": ("error", "a request the reference always answers got no answer"),
    "latency": ("error", "a latency distribution outside the tolerance"),
    "heartbeat": ("error", "the idle time before heartbeats outside the tolerance"),
    "capture_note": ("info", "something about the candidate capture itself (TLS, gaps)"),
}

DEFAULT_KS = 0.75  # calibrated on halves of real captures: see replay/conformance/timing.py
DEFAULT_REL = 0.5
DEFAULT_ALPHA = 0.01
DEFAULT_MIN_SAMPLES = 5


@dataclass(frozen=True, slots=True)
class Tolerance:
    """When a timing difference fails.

    ``distance`` is the KS statistic computed with a relative slack: the largest share of
    samples that would have to move by more than a factor (1 + ``rel``) to make the two
    distributions agree (``rel`` = 0 gives the plain KS statistic).  A kind fails when that
    distance exceeds ``ks`` AND the plain two-sample KS test's p-value is below ``alpha``
    (a difference that is large, beyond the slack, and real); with fewer than
    ``min_samples`` on either side the verdict is ``insufficient``.  A reference that holds
    only one aggregate estimate is compared by medians, failing beyond a relative
    difference of ``rel``.
    """

    ks: float = DEFAULT_KS
    rel: float = DEFAULT_REL
    alpha: float = DEFAULT_ALPHA
    min_samples: int = DEFAULT_MIN_SAMPLES

    def __post_init__(self) -> None:
        if not 0.0 < self.ks <= 1.0:
            raise ValueError(f"ks tolerance {self.ks} is not in (0, 1]")
        if not (self.rel >= 0.0 and math.isfinite(self.rel)):
            raise ValueError(f"relative slack {self.rel} must be a finite number >= 0")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha {self.alpha} is not in (0, 1]")
        if self.min_samples < 2:
            raise ValueError(f"min_samples {self.min_samples} is below 2")

    @classmethod
    def parse(cls, text: str) -> Tolerance:
        """``0.75`` (the distance bound) or ``ks=0.75,rel=0.5,alpha=0.01,min_samples=5``."""
        text = text.strip()
        try:
            if "=" not in text:
                return cls(ks=float(text))
            values: dict[str, float] = {}
            for part in text.split(","):
                key, _, raw = part.partition("=")
                key = key.strip()
                if key not in ("ks", "rel", "alpha", "min_samples"):
                    raise ValueError(f"unknown key {key!r} (ks, rel, alpha, min_samples)")
                values[key] = float(raw)
            n = values.pop("min_samples", DEFAULT_MIN_SAMPLES)
            if n != int(n):
                raise ValueError(f"min_samples {n} is not a whole number")
            return cls(
                ks=values.get("ks", DEFAULT_KS),
                rel=values.get("rel", DEFAULT_REL),
                alpha=values.get("alpha", DEFAULT_ALPHA),
                min_samples=int(n),
            )
        except ValueError as exc:
            raise ValueError(f"bad tolerance {text!r}: {exc}") from None

    def as_dict(self) -> dict[str, float | int]:
        return {
            "ks": self.ks,
            "rel": self.rel,
            "alpha": self.alpha,
            "min_samples": self.min_samples,
        }


@dataclass(frozen=True, slots=True)
class ConformanceFinding:
    """One deviation, pointing at a packet: ``index`` is its position in ``flow.packets``."""

    kind: str
    severity: Severity
    flow: str
    index: int | None
    ts: float | None
    message: str
    expected: str = ""
    actual: str = ""
    packet_hex: str = ""  # the candidate packet's bytes
    example_hex: str = ""  # closest matching reference example (or the expected bytes)
    offsets: tuple[int, ...] = ()  # differing byte offsets inside the packet
    request_index: int | None = None  # the request this response answers, same flow
    request: str = ""  # request kind involved, if any

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "flow": self.flow,
            "index": self.index,
            "ts": self.ts,
            "message": self.message,
            "expected": self.expected,
            "actual": self.actual,
            "packet_hex": self.packet_hex,
            "example_hex": self.example_hex,
            "offsets": list(self.offsets),
            "request_index": self.request_index,
            "request": self.request,
        }


def finding(
    kind: str,
    flow: str,
    index: int | None,
    ts: float | None,
    message: str,
    *,
    severity: Severity | None = None,
    **extra: object,
) -> ConformanceFinding:
    """A finding with its kind's default severity (``severity`` overrides it)."""
    sev = severity if severity is not None else KINDS[kind][0]
    return ConformanceFinding(kind, sev, flow, index, ts, message, **extra)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class TimingRow:
    """Latency (or heartbeat idle) of one kind: reference against candidate, in seconds.

    ``basis`` says what the verdict compared: ``latency``; ``service`` for device answers
    whose reference has service times (the latency minus the time a request waited behind
    earlier ones on the same connection, so a busier candidate is not failed for queueing);
    ``idle`` for the heartbeat.  ``ks``/``p_value``/``distance`` belong to the basis; with basis
    ``service`` the latency's own KS figures are in ``latency_ks``/``latency_p``.
    """

    variant: str
    request: str  # request kind, or "heartbeat"
    response: str  # response kind, or "idle"
    role: str  # who answers: device | cloud
    ref_count: int
    cand_count: int
    ref: dict[str, float]  # latency p50 / p95 / p99 in seconds (empty when no samples)
    cand: dict[str, float]
    ks: float | None  # plain two-sample KS statistic
    p_value: float | None
    distance: float | None  # KS statistic with the relative slack: what the verdict uses
    verdict: str  # pass | fail | insufficient
    method: str  # ks | median (aggregate reference) | none
    basis: str = "latency"  # latency | service | idle
    note: str = ""
    latency_ks: float | None = None
    latency_p: float | None = None
    ref_values: tuple[float, ...] = field(default=(), repr=False)  # latency (or idle)
    cand_values: tuple[float, ...] = field(default=(), repr=False)
    ref_basis_values: tuple[float, ...] = field(default=(), repr=False)  # service times
    cand_basis_values: tuple[float, ...] = field(default=(), repr=False)

    @property
    def label(self) -> str:
        if self.request == "heartbeat":
            return "heartbeat idle"
        return f"{self.request} -> {self.response}"

    def as_dict(self) -> dict[str, object]:
        scale = 1.0 if self.basis == "idle" else 1000.0
        unit = "s" if self.basis == "idle" else "ms"

        def conv(d: dict[str, float]) -> dict[str, float]:
            return {k: round(v * scale, 3) for k, v in d.items()}

        out: dict[str, object] = {
            "variant": self.variant,
            "request": self.request,
            "response": self.response,
            "role": self.role,
            "reference_samples": self.ref_count,
            "candidate_samples": self.cand_count,
            f"reference_{unit}": conv(self.ref),
            f"candidate_{unit}": conv(self.cand),
            "ks_statistic": None if self.ks is None else round(self.ks, 4),
            "p_value": self.p_value,
            "distance": None if self.distance is None else round(self.distance, 4),
            "verdict": self.verdict,
            "method": self.method,
            "basis": self.basis,
            "note": self.note,
        }
        if self.basis == "service":
            out["latency_ks_statistic"] = (
                None if self.latency_ks is None else round(self.latency_ks, 4)
            )
            out["latency_p_value"] = self.latency_p
        return out


@dataclass(frozen=True, slots=True)
class CoverageRow:
    sender: str
    kind: str
    reference: int  # packets of this kind in the reference (requests counted by the model)
    candidate: int
    status: str  # exercised | not_exercised | new

    def as_dict(self) -> dict[str, object]:
        return {
            "sender": self.sender,
            "kind": self.kind,
            "reference": self.reference,
            "candidate": self.candidate,
            "status": self.status,
        }


@dataclass(slots=True)
class DiffReport:
    reference: list[str]
    candidate: list[str]
    tolerance: Tolerance
    findings: list[ConformanceFinding] = field(default_factory=list)
    timing: list[TimingRow] = field(default_factory=list)
    coverage: list[CoverageRow] = field(default_factory=list)
    variants: dict[str, str] = field(default_factory=dict)  # candidate source -> ref variant
    notes: list[str] = field(default_factory=list)
    packets: int = 0

    @property
    def conformant(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    @property
    def verdict(self) -> str:
        return "conformant" if self.conformant else "nonconformant"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.kind] = out.get(f.kind, 0) + 1
        return dict(sorted(out.items()))

    def as_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "reference": self.reference,
            "candidate": self.candidate,
            "variants": self.variants,
            "tolerance": self.tolerance.as_dict(),
            "packets": self.packets,
            "finding_counts": self.counts(),
            "findings": [f.as_dict() for f in self.findings],
            "timing": [t.as_dict() for t in self.timing],
            "coverage": [c.as_dict() for c in self.coverage],
            "notes": self.notes,
        }
