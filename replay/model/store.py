# DeviceModel: everything learned from captures, and its versioned msgpack file format.
#
# Strategy: the model is plain data (exchanges, behaviour per variant, device identities,
# source files with hashes, findings).  Serialisation walks it into dicts with a fixed key
# order, so importing the same captures twice gives byte-identical files; loading checks
# the format marker and version and turns any malformed content into one ModelError.
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from cyncsim.replay.errors import ModelError
from cyncsim.replay.model._merge import (
    merge_behaviour,
    merge_devices,
    merge_exchanges,
    merge_findings,
)
from cyncsim.replay.model.behaviour import Behaviour, DeviceIdentity
from cyncsim.replay.model.dist import Distribution
from cyncsim.replay.model.learn import ExchangeModel, ResponseModel
from cyncsim.replay.model.stalls import StallModel
from cyncsim.replay.model.template import Template

__all__ = ["FORMAT", "VERSION", "DeviceModel", "merge_models"]

FORMAT = "cyncsim-model"
VERSION = 1


@dataclass(slots=True)
class DeviceModel:
    sources: list[dict[str, object]] = field(default_factory=list)
    exchanges: list[ExchangeModel] = field(default_factory=list)
    behaviour: dict[str, Behaviour] = field(default_factory=dict)
    devices: list[DeviceIdentity] = field(default_factory=list)
    findings: dict[str, int] = field(default_factory=dict)
    stalls: dict[str, StallModel] = field(default_factory=dict)  # per variant (stalls.py)

    # ------------------------------------------------------------------ queries
    @property
    def variants(self) -> list[str]:
        return sorted({e.variant for e in self.exchanges} | set(self.behaviour))

    def exchange(self, request: str, role: str, variant: str | None = None) -> ExchangeModel | None:
        """The exchange for a request key, keeping the role and the variant as long as it can.

        Order: the key in ``variant``; when only another variant has the key, ``variant``'s
        own exchange of another sub-kind of the same packet type whose responses are the
        same kinds (e.g. the cloud's 0x83:fa:00 -> 0x88 for a 0x83:fa:db only the local server
        answered: the cloud's timing, not the local server's), most requests first; then the
        other variant's exchange; then the bare packet type, ``variant`` first.  A sibling
        must answer with the same response kinds, so a command never borrows another
        opcode's f9 result.
        """
        order = [variant] if variant else []
        order += [v for v in self.variants if v not in order]
        mine = [ex for ex in self.exchanges if ex.role == role]
        for want in (request, request.split(":", 1)[0]):
            for v in order:
                for ex in mine:
                    if ex.request == want and ex.variant == v:
                        if variant and v != variant and want == request:
                            return self._sibling(ex, variant) or ex
                        return ex
        return None

    def _sibling(self, other: ExchangeModel, variant: str) -> ExchangeModel | None:
        """``variant``'s exchange of the same role and packet type as ``other`` (another
        sub-kind, or the bare type) whose responses are the same kinds in the same order
        (most requests, then key, first)."""
        ptype = other.request.split(":", 1)[0]
        kinds = [r.key for r in other.responses]
        same = [
            ex
            for ex in self.exchanges
            if ex.role == other.role
            and ex.variant == variant
            and ex.request.split(":", 1)[0] == ptype
            and [r.key for r in ex.responses] == kinds
        ]
        return min(same, key=lambda ex: (-ex.requests, ex.request), default=None)

    def summary(self) -> dict[str, Any]:
        kinds = []
        for ex in self.exchanges:
            first = ex.responses[0]
            kinds.append(
                {
                    "request": ex.request,
                    "role": ex.role,
                    "variant": ex.variant,
                    "responses": [r.key for r in ex.responses],
                    "samples": first.latency.count,
                    "requests": ex.requests,
                    "ambiguous_dropped": ex.ambiguous,
                    "latency_ms": _ms(first.latency),
                }
            )
        hb: dict[str, Any] = {}
        for v, beh in sorted(self.behaviour.items()):
            if beh.heartbeat_idle:
                hb[v] = {
                    "p50": round(beh.heartbeat_idle.p50, 2),
                    "samples": beh.heartbeat_idle.count,
                    "method": beh.heartbeat_idle.method,
                }
        heartbeat: dict[str, Any] = {}
        if hb:
            best = max(hb.values(), key=lambda h: (h["method"] == "per-connection", h["samples"]))
            heartbeat = dict(best) | {"by_variant": hb}
        return {
            "kinds": kinds,
            "heartbeat_idle_s": heartbeat,
            "devices": len(self.devices),
            "sources": self.sources,
            "findings": [{"reason": k, "count": v} for k, v in sorted(self.findings.items())],
        }

    def merge(self, other: DeviceModel) -> DeviceModel:
        """Both models as one, as if their captures had been imported together (_merge.py).

        Order-free: ``a.merge(b)`` equals ``b.merge(a)``.  A capture both models were learned
        from (same SHA-256) would be counted twice: that is a ModelError.
        """
        mine = {str(s["sha256"]): str(s["name"]) for s in self.sources if s.get("sha256")}
        twice = sorted(
            str(s["name"]) for s in other.sources if s.get("sha256") and s["sha256"] in mine
        )
        if twice:
            raise ModelError(
                f"{', '.join(twice)} already in the model: a capture is merged only once",
                reason="merge",
            )
        return DeviceModel(
            sources=sorted(
                self.sources + other.sources, key=lambda s: (str(s["name"]), str(s["sha256"]))
            ),
            exchanges=merge_exchanges(self.exchanges, other.exchanges),
            behaviour=merge_behaviour(self.behaviour, other.behaviour),
            devices=merge_devices(self.devices, other.devices),
            findings=merge_findings(self.findings, other.findings),
            stalls=_merge_stalls(self.stalls, other.stalls),
        )

    # ------------------------------------------------------------------ persistence
    def to_obj(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "sources": self.sources,
            "exchanges": [_exchange_obj(e) for e in self.exchanges],
            "behaviour": {v: _behaviour_obj(b) for v, b in sorted(self.behaviour.items())},
            "devices": [d.to_obj() for d in self.devices],
            "findings": dict(sorted(self.findings.items())),
        } | (
            {"stalls": {v: s.to_obj() for v, s in sorted(self.stalls.items())}}
            if self.stalls
            else {}
        )

    def dumps(self) -> bytes:
        data: bytes = msgpack.packb(self.to_obj(), use_bin_type=True)
        return data

    def save(self, path: str | Path) -> None:
        """Write the model whole or not at all: a temporary file in the same folder, renamed
        over ``path`` once complete (an interrupted save leaves no partial model)."""
        dest = Path(path)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            data = self.dumps()
            try:
                tmp.write_bytes(data)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise ModelError(f"cannot write: {exc.strerror}", path=str(path)) from None

    @classmethod
    def load(cls, path: str | Path) -> DeviceModel:
        p = str(path)
        try:
            raw = Path(p).read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read: {exc.strerror}", path=p, reason="unreadable") from None
        return cls.loads(raw, path=p)

    @classmethod
    def loads(cls, raw: bytes, *, path: str = "") -> DeviceModel:
        try:
            obj = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ModelError(
                f"not a model file (msgpack: {exc})", path=path, reason="corrupt"
            ) from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ModelError("not a cyncsim model file", path=path, reason="corrupt")
        if obj.get("version") != VERSION:
            raise ModelError(
                f"model format version {obj.get('version')!r}, this cyncsim reads {VERSION}:"
                " re-import the captures",
                path=path,
                reason="version",
            )
        try:
            return _from_obj(obj)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(
                f"corrupt model content: {exc!r}", path=path, reason="corrupt"
            ) from None


def _ms(d: Distribution) -> dict[str, float]:
    s = d.summary(1000.0)
    return {k: float(v) for k, v in s.items() if k != "samples"}


def _exchange_obj(e: ExchangeModel) -> dict[str, Any]:
    return {
        "request": e.request,
        "role": e.role,
        "variant": e.variant,
        "requests": e.requests,
        "answered": e.answered,
        "ambiguous": e.ambiguous,
        "responses": [
            {
                "key": r.key,
                "template": r.template.to_obj(),
                "share": r.share,
                "latency": r.latency.to_obj(),
                "service": r.service.to_obj() if r.service else None,
            }
            for r in e.responses
        ],
        "by_outstanding": {k: d.to_obj() for k, d in e.by_outstanding.items()},
    }


def _behaviour_obj(b: Behaviour) -> dict[str, Any]:
    return {
        "heartbeat_idle": b.heartbeat_idle.to_obj(),
        "status_interval": b.status_interval.to_obj(),
        "hello_retry": b.hello_retry.to_obj(),
        "connect_scripts": [[n, [list(step) for step in steps]] for n, steps in b.connect_scripts],
        "connect_spread": b.connect_spread.to_obj(),
    }


def _from_obj(obj: dict[str, Any]) -> DeviceModel:
    m = DeviceModel(sources=list(obj["sources"]), findings=dict(obj["findings"]))
    # Files written before stalls were learned have none: no stalls.
    m.stalls = {str(v): StallModel.from_obj(s) for v, s in obj.get("stalls", {}).items()}
    for e in obj["exchanges"]:
        ex = ExchangeModel(
            str(e["request"]), str(e["role"]), str(e["variant"]),
            int(e["requests"]), int(e["answered"]), int(e["ambiguous"]),
        )  # fmt: skip
        for r in e["responses"]:
            svc = r["service"]
            ex.responses.append(
                ResponseModel(
                    str(r["key"]),
                    Template.from_obj(r["template"]),
                    float(r["share"]),
                    Distribution.from_obj(r["latency"]),
                    Distribution.from_obj(svc) if svc else None,
                )
            )
        ex.by_outstanding = {k: Distribution.from_obj(d) for k, d in e["by_outstanding"].items()}
        m.exchanges.append(ex)
    for v, b in obj["behaviour"].items():
        m.behaviour[v] = Behaviour(
            str(v),
            Distribution.from_obj(b["heartbeat_idle"]),
            Distribution.from_obj(b["status_interval"]),
            Distribution.from_obj(b["hello_retry"]),
            [(int(n), [(str(k), float(d)) for k, d in steps]) for n, steps in b["connect_scripts"]],
            # absent in files written before the reconnect wave was learned: none learned
            Distribution.from_obj(b["connect_spread"]) if "connect_spread" in b else Distribution(),
        )
    for d in obj["devices"]:
        m.devices.append(
            DeviceIdentity(
                bytes(d["id"]),
                bytes(d["auth"]),
                str(d["variant"]),
                dict(d["firmware"]),
                d["mesh_node"],
                dict(d["state"]),
            )
        )
    return m


def _merge_stalls(a: dict[str, StallModel], b: dict[str, StallModel]) -> dict[str, StallModel]:
    out = dict(a)
    for v, s in b.items():
        out[v] = out[v].merge(s) if v in out else s
    return dict(sorted(out.items()))


def merge_models(models: list[DeviceModel]) -> DeviceModel:
    """All ``models`` as one (in any order: the result is the same)."""
    if not models:
        raise ModelError("no models to merge", reason="merge")
    out = models[0]
    for m in models[1:]:
        out = out.merge(m)
    return out
