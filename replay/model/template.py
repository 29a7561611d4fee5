# Byte templates of responses: which field echoes the request, counts, carries state, ...
#
# Strategy: a template is the declared field list of an exemplar response (layout.py), each
# field labelled with a role learned by aligning many (request, response) pairs:
#   echo      the bytes equal request bytes source..source+width in (nearly) every pair
#   counter   the sender's own counter: +1 per packet of that type on a connection
#   identity  the responding device's own id
#   state     comes from device state (on/off, brightness, ...)
#   checksum / length  computed when rendering
#   clock     wall-clock time
#   constant  never varied
#   variable  varied without an explanation; rendered from the exemplar
# Where data cannot tell echo from constant (the value never varied) the declared field
# class breaks the tie; see ``learn_template``.
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cyncsim.replay.model.layout import FieldSpec, fields_of
from cyncsim.replay.protocol import CyncPacket, decode_packet

__all__ = ["ECHO_CLASSES", "Template", "TemplateField", "learn_template"]

ECHO_CLASSES = frozenset({"id", "msg", "seq"})
_AGREE = 0.98


@dataclass(frozen=True, slots=True)
class TemplateField:
    name: str
    role: str
    start: int
    end: int
    source: int = -1  # echo: first request byte copied
    counter: str = ""  # counter: which counter

    def to_obj(self) -> list[object]:
        return [self.name, self.role, self.start, self.end, self.source, self.counter]

    @classmethod
    def from_obj(cls, obj: Sequence[object]) -> TemplateField:
        name, role, start, end, source, counter = obj
        if not (isinstance(name, str) and isinstance(role, str) and isinstance(counter, str)):
            raise ValueError("template field names must be strings")
        if not (isinstance(start, int) and isinstance(end, int) and isinstance(source, int)):
            raise ValueError("template field offsets must be integers")
        return cls(name, role, start, end, source, counter)


@dataclass(frozen=True, slots=True)
class Template:
    exemplar: bytes
    fields: tuple[TemplateField, ...]

    def roles(self) -> dict[str, str]:
        return {f.name: f.role for f in self.fields}

    def field(self, name: str) -> TemplateField | None:
        return next((f for f in self.fields if f.name == name), None)

    def to_obj(self) -> dict[str, object]:
        return {"exemplar": self.exemplar, "fields": [f.to_obj() for f in self.fields]}

    @classmethod
    def from_obj(cls, obj: dict[str, object]) -> Template:
        ex, fields = obj["exemplar"], obj["fields"]
        if not isinstance(ex, bytes) or not isinstance(fields, list):
            raise ValueError("template exemplar/fields of the wrong type")
        return cls(ex, tuple(TemplateField.from_obj(f) for f in fields))


def _echo_source(
    spec: FieldSpec,
    pairs: Sequence[tuple[bytes, bytes]],
    req_fields: list[FieldSpec],
) -> int:
    """Request offset whose bytes the response field copies in (nearly) every pair, or -1."""
    width = spec.end - spec.start
    need = max(1, int(len(pairs) * _AGREE + 0.999))
    min_len = min(len(r) for r, _ in pairs)
    declared = [f.start for f in req_fields if f.end - f.start == width and f.cls == spec.cls]
    others = [i for i in range(min_len - width + 1) if i not in declared]
    for i in declared + others:
        hits = sum(1 for r, s in pairs if r[i : i + width] == s[spec.start : spec.end])
        if hits >= need:
            if i not in declared:
                # Off-layout coincidences count only when the copied bytes really vary.
                vals = {s[spec.start : spec.end] for _, s in pairs}
                if len(vals) < 2:
                    continue
            return i
    return -1


def learn_template(
    pairs: Sequence[tuple[bytes, bytes]],
    *,
    device_ids: Sequence[bytes],
    counters: dict[int, str],
) -> Template:
    """Label the fields of a response kind from its (request bytes, response bytes) pairs.

    ``device_ids[k]`` is the id of the device on the connection of pair k; ``counters``
    maps a response packet type to the counter name when that type's message id was seen to
    step by one per packet on a connection.
    """
    exemplar = pairs[0][1]
    same = [(r, s) for r, s in pairs if len(s) == len(exemplar)]
    ids = [d for (r, s), d in zip(pairs, device_ids, strict=True) if len(s) == len(exemplar)]
    resp_pkt = decode_packet(exemplar, strict=False)
    req_pkt = decode_packet(same[0][0], strict=False)
    specs = fields_of(resp_pkt)
    req_fields = fields_of(req_pkt)
    labelled: dict[str, TemplateField] = {}
    for spec in specs:
        got = _label(spec, same, ids, req_fields, counters, resp_pkt)
        if got.role == "variable" and spec.end - spec.start > 1:
            # Part of the field may be copied (0x78 copies bytes 9-10, then sends 05).
            for i in range(spec.start, spec.end):
                sub = FieldSpec(f"{spec.name}[{i - spec.start}]", "byte", i, i + 1)
                labelled[sub.name] = _label(sub, same, ids, req_fields, counters, resp_pkt)
            continue
        labelled[spec.name] = got
    # Tie-break for a device id that is both an echo and the device's own id: a response
    # whose message id is echoed echoes the whole prefix (0x7B, 0xAB); otherwise it is the
    # device speaking for itself (f9 results, 0x83 reports).
    dev = labelled.get("device_id")
    msg = labelled.get("msg_id")
    if dev is not None and dev.role == "echo" and (msg is None or msg.role != "echo"):
        own = all(s[dev.start : dev.end] == d for (_, s), d in zip(same, ids, strict=True))
        if own:
            labelled["device_id"] = TemplateField(dev.name, "identity", dev.start, dev.end)
    return Template(exemplar, tuple(labelled.values()))


def _label(
    spec: FieldSpec,
    pairs: Sequence[tuple[bytes, bytes]],
    ids: Sequence[bytes],
    req_fields: list[FieldSpec],
    counters: dict[int, str],
    resp_pkt: CyncPacket,
) -> TemplateField:
    name, start, end = spec.name, spec.start, spec.end
    if spec.cls in ("length", "checksum", "state", "clock"):
        return TemplateField(name, spec.cls, start, end)
    values = {s[start:end] for _, s in pairs}
    counted = spec.cls == "msg" and resp_pkt.type in counters
    # A field that never varied is an echo only by its declared class, and a message id of a
    # type whose ids were seen counting is a counter unless varying values prove an echo.
    if len(values) > 1 or (spec.cls in ECHO_CLASSES and not counted):
        src = _echo_source(spec, pairs, req_fields)
        if src >= 0:
            return TemplateField(name, "echo", start, end, source=src)
    if counted:
        return TemplateField(name, "counter", start, end, counter=counters[resp_pkt.type])
    if spec.cls == "id" and all(s[start:end] == d for (_, s), d in zip(pairs, ids, strict=True)):
        return TemplateField(name, "identity", start, end)
    if spec.cls == "auth":
        return TemplateField(name, "identity", start, end)
    if len(values) == 1:
        return TemplateField(name, "constant", start, end)
    if spec.cls == "tick":
        return TemplateField(name, "counter", start, end, counter="tick")
    return TemplateField(name, "variable", start, end)
