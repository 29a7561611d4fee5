# The reference side of a diff: a learned model, plus example packets when captures are given.
#
# Strategy: a reference is always a DeviceModel (a model file, or learned on the fly from
# captures with the same learner as `cyncsim import`).  What the model does not keep, the
# reference adds when it has the captures: up to EXAMPLES distinct packets of every kind per
# sender, for "closest matching reference example" in findings.  With a model file the
# examples are the response templates' exemplars.  Variant choice: a candidate recorded
# against a local server is compared with the reference's "local" exchanges, one against the
# real cloud with "cloud"; when the reference lacks that variant any variant is used, with a
# note.
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cyncsim.replay.capture import (
    DEFAULT_CLOUD_PORTS,
    CaptureResult,
    detect_format,
    load_bytes,
    read_capture,
)
from cyncsim.replay.capture.model import CLOUD, DEVICE
from cyncsim.replay.describe import request_key
from cyncsim.replay.errors import ModelError
from cyncsim.replay.model import DeviceModel, ExchangeModel, learn_model

__all__ = ["EXAMPLES", "Reference", "load_reference", "other_side"]

EXAMPLES = 32  # distinct example packets kept per (sender, kind)


def other_side(side: str) -> str:
    return CLOUD if side == DEVICE else DEVICE


@dataclass(slots=True)
class Reference:
    model: DeviceModel
    sources: list[str]
    examples: dict[tuple[str, str], list[bytes]] = field(default_factory=dict)
    from_captures: bool = False
    # packets of each kind per sender seen in the reference (captures) or learned requests
    kind_counts: dict[tuple[str, str], int] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: DeviceModel, sources: list[str]) -> Reference:
        ref = cls(model, sources)
        for ex in model.exchanges:
            side = other_side(ex.role)
            key = (side, ex.request)
            ref.kind_counts[key] = ref.kind_counts.get(key, 0) + ex.requests
            for r in ex.responses:
                ref._add_example(ex.role, r.key, r.template.exemplar)
                ref.kind_counts.setdefault((ex.role, r.key), 0)
        for beh in model.behaviour.values():
            for _, steps in beh.connect_scripts:
                for step_key, _ in steps:
                    ref.kind_counts.setdefault((DEVICE, step_key), 0)
        return ref

    @classmethod
    def from_result(cls, result: CaptureResult, raw: dict[str, bytes] | None = None) -> Reference:
        model = learn_model(result, raw)
        ref = cls.from_model(model, list(result.sources))
        ref.from_captures = True
        ref.kind_counts = {}
        for flow in result.flows:
            for fp in flow.packets:
                key = (fp.sender, request_key(fp.packet))
                ref.kind_counts[key] = ref.kind_counts.get(key, 0) + 1
                ref._add_example(fp.sender, key[1], fp.packet.encode())
        return ref

    def _add_example(self, sender: str, key: str, raw: bytes) -> None:
        seen = self.examples.setdefault((sender, key), [])
        if len(seen) < EXAMPLES and raw not in seen:
            seen.append(raw)

    # ------------------------------------------------------------------ queries
    @property
    def variants(self) -> list[str]:
        return self.model.variants

    def pick_variant(self, wanted: str) -> tuple[str, str]:
        """The reference variant to compare a candidate of variant ``wanted`` with, and a note."""
        have = self.variants
        if wanted in have:
            return wanted, ""
        if not have:
            raise ModelError("the reference has no learned exchanges to compare with")
        best = max(have, key=lambda v: sum(1 for e in self.model.exchanges if e.variant == v))
        return best, (
            f"the reference has no '{wanted}' variant (it has {', '.join(have)}); "
            f"compared with '{best}'"
        )

    def exchange(self, key: str, role: str, variant: str) -> ExchangeModel | None:
        """The exchange for a request kind: exact kind in the variant first, then fallbacks."""
        return self.model.exchange(key, role, variant)

    def exchanges(self, variant: str) -> list[ExchangeModel]:
        return [e for e in self.model.exchanges if e.variant == variant]

    def known(self, sender: str, key: str) -> bool:
        return (sender, key) in self.kind_counts

    def counters(self, variant: str) -> set[tuple[str, int]]:
        """(sender, packet type) whose message id the reference saw counting by one."""
        out: set[tuple[str, int]] = set()
        for ex in self.exchanges(variant):
            for r in ex.responses:
                for f in r.template.fields:
                    if f.role == "counter" and ":" in f.counter:
                        sender, _, t = f.counter.partition(":")
                        if sender in (DEVICE, CLOUD) and t.startswith("0x"):
                            out.add((sender, int(t, 16)))
        return out

    def has_defect(self, reason: str) -> bool:
        return self.model.findings.get(f"defect:{reason}", 0) > 0

    def has_finding(self, reason: str) -> bool:
        return self.model.findings.get(reason, 0) > 0

    def closest(self, sender: str, key: str, raw: bytes) -> bytes | None:
        """The reference example of this kind nearest to ``raw`` (fewest differing bytes)."""
        cands = self.examples.get((sender, key))
        if not cands:
            return None

        def distance(ex: bytes) -> tuple[int, int]:
            diff = sum(1 for a, b in zip(ex, raw, strict=False) if a != b)
            return (abs(len(ex) - len(raw)), diff)

        return min(cands, key=distance)


def load_reference(
    paths: Iterable[str | Path], *, cloud_ports: tuple[int, ...] = DEFAULT_CLOUD_PORTS
) -> Reference:
    """One model file (recognised by content), or captures to learn a reference from."""
    plist = [str(p) for p in paths]
    if not plist:
        raise ModelError("no reference given")
    raw = {p: load_bytes(p) for p in plist}
    models = [p for p in plist if detect_format(raw[p][:256]) == "model"]
    if models:
        if len(plist) > 1:
            raise ModelError(
                f"give either one model file or captures as the reference, not both: {models[0]}"
            )
        return Reference.from_model(DeviceModel.loads(raw[models[0]], path=models[0]), plist)
    result = CaptureResult()
    for p in plist:
        result.extend(read_capture(p, cloud_ports=cloud_ports))
    if not any(f.kind == "cync" for f in result.flows):
        raise ModelError(f"no decodable Cync traffic in the reference: {', '.join(plist)}")
    return Reference.from_result(result, raw)
