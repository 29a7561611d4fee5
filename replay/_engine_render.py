# The engine's view of a learned model: compiled byte templates, response plans, behaviour.
# (The engine's small value types, seeds and fixed packet builders are in _engine_parts.py;
# they are re-exported here for the importers of this module.)
#
# Strategy: a ModelView is built once per (model, role, variant) and shared by every engine
# using it (a fleet of 10,000 devices holds one).  Each learned Template is compiled into a
# short list of ops over the exemplar (constant runs, echo ranges, identity, counter, state,
# clock, mesh table), and the ops into one straight-line function (generated once, every
# model byte passed in as a constant), so rendering costs one b"".join.  Lengths and the
# frame checksum are recomputed with the codec's layout and ``frame_checksum`` (what a
# non-strict decode and a re-encode with checksum=None give).  Behaviour distributions fall
# back from the view's variant to the other variants, then to documented defaults
# (PROTOCOL.md sections 10.2 and 10.3).
# Private module: the public names are re-exported by replay.engine.
from __future__ import annotations

import datetime
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from cyncsim.replay._engine_parts import (
    Action,
    Close,
    DeviceState,
    Relay,
    SeedSource,
    Send,
    firmware_report,
    frame_key,
    pick_script,
    root_seed,
    status_packet,
)
from cyncsim.replay.errors import ModelError
from cyncsim.replay.model import DeviceModel, Distribution, ResponseModel, Template
from cyncsim.replay.payloads import TimeReply
from cyncsim.replay.protocol import FRAME_MARKER, HEADER_LEN, PacketType, frame_checksum

__all__ = [
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_RECONNECT_S",
    "Action",
    "Close",
    "CommandPlans",
    "DeviceState",
    "ModelView",
    "Relay",
    "RenderContext",
    "ResponsePlan",
    "SeedSource",
    "Send",
    "finish_packet",
    "firmware_report",
    "frame_key",
    "pick_script",
    "root_seed",
    "status_packet",
]

DEFAULT_HEARTBEAT_S = 21.0  # PROTOCOL.md 10.2: 0xD3 after ~21 s without traffic
DEFAULT_RECONNECT_S = 15.0  # PROTOCOL.md 10.3: unanswered devices re-sent 0x23 every 15 s
MESH_RECORD = 24  # PROTOCOL.md 7.6: bytes per node record of the f9 52 mesh table
_MESH_HEAD = 6  # "1f 00 00 00 | 1f 00" before the records
_FRAMED = frozenset((PacketType.DATA, PacketType.REPORT))
_FRAME_MIN = 23  # 12-byte prefix + 9-byte frame head + checksum + end marker
_VIEW_CACHE_SIZE = 16
_PLAN_CACHE_SIZE = 1024

# Template ops: (op, start, end, payload); payload is the exemplar bytes of the range.
_CONST, _ECHO, _IDENT, _COUNTER, _STATE, _CLOCK, _MESH = range(7)
_Op = tuple[int, int, int, bytes, str]


@dataclass(slots=True)
class RenderContext:
    """What a template needs from its engine: own identity, counters, state, clock."""

    device_id: bytes
    auth_code: bytes
    counters: dict[str, int]
    node: int
    state: DeviceState
    mesh: dict[int, DeviceState]
    wall: float = 0.0  # wall-clock seconds (for clock fields)

    def next_count(self, name: str) -> int:
        value = self.counters.get(name, 1) & 0xFFFF
        self.counters[name] = (value + 1) & 0xFFFF
        return value


_StateFn = Callable[[int, DeviceState], bytes]
# Template fields with role "state", by name (replay/model/layout.py, fa db 13 status).
_STATE_FIELDS: dict[str, _StateFn] = {
    "node": lambda node, st: node.to_bytes(2, "little"),
    "node2": lambda node, st: node.to_bytes(2, "little"),
    "connected": lambda node, st: b"\x01" if st.online else b"\x00",
    "on": lambda node, st: b"\x01" if st.on else b"\x00",
    "brightness": lambda node, st: bytes((st.brightness & 0xFF,)),
    "color_temp": lambda node, st: bytes((st.color_temp & 0xFF,)),
    "rgb": lambda node, st: bytes(st.rgb),
}


def finish_packet(data: bytes) -> bytes:
    """Fix the outer length and, for a 0x73/0x83 inner frame, its LE16 length and checksum.

    The codec's own layout (HEADER, the frame head at byte 12) and ``frame_checksum`` do
    the work, so the result is what decoding non-strictly and re-encoding with
    ``checksum=None`` gives (the unit tests check that), at a fraction of the cost.
    """
    n = len(data)
    buf = bytearray(data)
    buf[3:5] = (n - HEADER_LEN).to_bytes(2, "big")
    if buf[0] in _FRAMED and n >= _FRAME_MIN and buf[12] in (FRAME_MARKER, 0x00):
        length = (n - _FRAME_MIN).to_bytes(2, "little")
        buf[19:21] = length
        buf[n - 2] = frame_checksum(buf[18], length, bytes(buf[21 : n - 2]))
    return bytes(buf)


def _clock_body(exemplar: bytes, wall: float) -> bytes:
    """11-byte 0xC8 body for ``wall`` in the UTC offset the exemplar carries (+-hhmm)."""
    hhmm = int.from_bytes(exemplar[9:11], "big", signed=True)
    minutes = (-1 if hhmm < 0 else 1) * ((abs(hhmm) // 100) * 60 + abs(hhmm) % 100)
    tz = datetime.timezone(datetime.timedelta(minutes=minutes))
    t = datetime.datetime.fromtimestamp(wall, tz)
    reply = TimeReply(
        t.year, t.month, t.day, t.isoweekday() % 7 + 1, t.hour, t.minute, t.second, hhmm
    )
    return reply.data()


def _mesh_table(exemplar: bytes, own: int, mesh: dict[int, DeviceState]) -> bytes:
    """The f9 52 table data for the known nodes (own node first), records shaped like the
    exemplar's: its first record for the bridge itself, its second for every other node."""
    records = [
        exemplar[_MESH_HEAD + i * MESH_RECORD : _MESH_HEAD + (i + 1) * MESH_RECORD]
        for i in range(min(2, (len(exemplar) - _MESH_HEAD) // MESH_RECORD))
    ]
    order = [own, *sorted(n for n in mesh if n != own)] if own in mesh else sorted(mesh)
    out = bytearray()
    count = len(order) & 0xFF
    out += bytes((count,)) + exemplar[1:4] + bytes((count,)) + exemplar[5:6]
    for i, node in enumerate(order):
        rec = bytearray(records[0 if i == 0 or len(records) < 2 else 1])
        st = mesh[node]
        rec[0:2] = node.to_bytes(2, "little")
        rec[8] = int(st.on)
        rec[12] = st.brightness & 0xFF
        rec[16] = st.color_temp & 0xFF
        rec[20:23] = bytes(st.rgb)
        out += rec
    return bytes(out)


_Renderer = Callable[[bytes | None, RenderContext], bytes]


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    key: str
    exemplar: bytes
    ops: tuple[_Op, ...]
    finish: bool  # a checksum or a variable-size part: run finish_packet
    counter: str = ""  # the counter this template takes a value from ("" for none)
    fn: _Renderer | None = field(default=None, compare=False, repr=False)  # set by compile

    @classmethod
    def compile(cls, key: str, tpl: Template) -> CompiledTemplate:
        ex = tpl.exemplar
        ops: list[_Op] = []
        finish = False
        for f in sorted(tpl.fields, key=lambda f: f.start):
            seg = ex[f.start : f.end]
            op = _CONST
            name = f.name
            if f.role == "echo" and f.source >= 0:
                op, name = _ECHO, str(f.source)
            elif f.role == "identity":
                op = _IDENT
            elif f.role == "counter":
                op, name = _COUNTER, f.counter
            elif f.role == "state":
                op = _STATE
            elif f.role == "clock" and len(seg) == 11:
                op = _CLOCK
            elif f.role == "checksum":
                finish = True
            elif (
                key == "0x73:f9:52"
                and f.name == "data"
                and len(seg) > _MESH_HEAD
                and (len(seg) - _MESH_HEAD) % MESH_RECORD == 0
            ):
                op, finish = _MESH, True
            if ops and op == _CONST and ops[-1][0] == _CONST and ops[-1][2] == f.start:
                prev = ops.pop()
                ops.append((_CONST, prev[1], f.end, prev[3] + seg, ""))
            elif (
                ops
                and op == _ECHO
                and ops[-1][0] == _ECHO
                and ops[-1][2] == f.start
                and int(ops[-1][4]) + (ops[-1][2] - ops[-1][1]) == f.source
            ):
                prev = ops.pop()
                ops.append((_ECHO, prev[1], f.end, prev[3] + seg, prev[4]))
            else:
                ops.append((op, f.start, f.end, seg, name))
        counter = next((op[4] for op in ops if op[0] == _COUNTER), "")
        compiled = cls(key, ex, tuple(ops), finish, counter)
        object.__setattr__(compiled, "fn", _build_renderer(compiled))
        return compiled

    def render(self, request: bytes | None, ctx: RenderContext) -> bytes:
        """The response bytes for ``request`` (None: spontaneous, echoes use the exemplar)."""
        assert self.fn is not None, "use CompiledTemplate.compile"
        return self.fn(request, ctx)


_STATE_EXPR = {  # straight-line forms of _STATE_FIELDS (x: the RenderContext)
    "node": "x.node.to_bytes(2, 'little')",
    "node2": "x.node.to_bytes(2, 'little')",
    "connected": "(b'\\x01' if x.state.online else b'\\x00')",
    "on": "(b'\\x01' if x.state.on else b'\\x00')",
    "brightness": "bytes((x.state.brightness & 255,))",
    "color_temp": "bytes((x.state.color_temp & 255,))",
    "rgb": "bytes(x.state.rgb)",
}


def _build_renderer(tpl: CompiledTemplate) -> _Renderer:
    """Compile ``tpl.ops`` into one straight-line function (one join, no per-op dispatch).

    Only fixed code shapes are generated; every byte string and name taken from the model is
    passed in as a constant (``K[i]``), never pasted into the source.
    """
    consts: list[object] = []
    lines: list[str] = ["def render(r, x):", "    n = -1 if r is None else len(r)"]
    parts: list[str] = []

    def k(value: object) -> str:
        consts.append(value)
        return f"K[{len(consts) - 1}]"

    for i, (op, start, end, seg, name) in enumerate(tpl.ops):
        width = end - start
        if op == _CONST:
            parts.append(k(seg))
        elif op == _ECHO:
            src = int(name)
            parts.append(f"(r[{src}:{src + width}] if n >= {src + width} else {k(seg)})")
        elif op == _IDENT:
            own = "x.auth_code" if name == "auth" else "x.device_id"
            parts.append(f"({own} if len({own}) == {width} else {k(seg)})")
        elif op == _COUNTER:
            cname = k(name)
            lines += [
                f"    v{i} = x.counters.get({cname}, 1) & 65535",
                f"    x.counters[{cname}] = (v{i} + 1) & 65535",
            ]
            if name == "tick" and width == 2:
                parts.append(f"v{i}.to_bytes(2, 'little')")
            else:
                parts.append(f"(v{i}.to_bytes(2, 'big') + bytes({width}))[:{width}]")
        elif op == _STATE:
            expr = _STATE_EXPR.get(name)
            if expr is None:
                parts.append(k(seg))
            else:
                lines.append(f"    s{i} = {expr}")
                parts.append(f"(s{i} if len(s{i}) == {width} else {k(seg)})")
        elif op == _CLOCK:
            parts.append(f"_clock({k(seg)}, x.wall)")
        else:
            parts.append(f"_mesh({k(seg)}, x.node, x.mesh)")
    lines.append(f"    d = b''.join(({', '.join(parts)},))")
    variable = any(op[0] == _MESH for op in tpl.ops)
    if variable:
        lines.append("    return _finish(d)")
    elif tpl.finish and len(tpl.exemplar) >= _FRAME_MIN and tpl.exemplar[0] in _FRAMED:
        # Same size as the exemplar: lengths stand; the frame checksum is recomputed.
        lines.append("    return d[:-2] + bytes((_cs(d[18], d[19:21], d[21:-2]), d[-1]))")
    elif tpl.finish:
        lines.append("    return _finish(d)")
    else:
        lines.append("    return d")
    namespace: dict[str, object] = {"K": tuple(consts), "_clock": _clock_body,
                                    "_mesh": _mesh_table, "_finish": finish_packet,
                                    "_cs": frame_checksum}  # fmt: skip
    exec(compile("\n".join(lines), f"<template {tpl.key}>", "exec"), namespace)
    fn = namespace["render"]
    assert callable(fn)
    return fn


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    """One learned response of an exchange: its template and the delay to sample."""

    key: str
    template: CompiledTemplate
    delay: Distribution  # queued: service time; otherwise latency from the request
    share: float
    queued: bool = False  # FIFO behind the previous response of this kind


def _plan(resp: ResponseModel, role: str) -> ResponsePlan:
    # A device works through its commands' acks and results one after another (service
    # times).  Its status reports are not a queue of their own: each follows its command by
    # the learned latency, so a long run of commands cannot pile reports up without bound.
    queued = role == "device" and resp.service is not None and not resp.key.startswith("0x83")
    delay = resp.service if queued and resp.service is not None else resp.latency
    return ResponsePlan(
        resp.key, CompiledTemplate.compile(resp.key, resp.template), delay, resp.share, queued
    )


@dataclass(frozen=True, slots=True)
class CommandPlans:
    """The answers to one 0x73 request key, pre-split for the device's cases."""

    plans: tuple[ResponsePlan, ...]  # everything learned (0x7b, f9 result, 0x83 status)
    without_status: tuple[ResponsePlan, ...]  # when the command changed nothing here
    acks: tuple[ResponsePlan, ...]  # the 0x7b alone (foreign id, duplicate, malformed)
    known: bool  # the model has an f9 result for this request


@dataclass(slots=True)
class ModelView:
    """A model seen by one role in one variant: plans by request key, behaviour, templates.

    ``plans(key)`` follows DeviceModel.exchange (this variant, then the others, then the bare
    packet type); request keys in ``strict_keys`` use this variant's exchange only.
    """

    model: DeviceModel
    role: str
    variant: str
    strict_keys: frozenset[str] = frozenset()
    _plans: dict[str, tuple[ResponsePlan, ...] | None] = field(default_factory=dict)
    _splits: dict[str, CommandPlans] = field(default_factory=dict)
    ack: ResponsePlan | None = None  # the 0x7b answer to any 0x73 (device role)
    report: ResponsePlan | None = None  # a learned 0x83 fa db status template
    heartbeat: Distribution | None = None
    status_interval: Distribution | None = None
    reconnect: Distribution | None = None
    scripts: list[tuple[int, list[tuple[str, float]]]] = field(default_factory=list)

    @classmethod
    def get(cls, model: DeviceModel, role: str, variant: str | None = None) -> ModelView:
        """The shared view of ``model`` for ``role`` (cached; ``variant`` None = default)."""
        if not isinstance(model, DeviceModel):
            raise ModelError(f"expected a DeviceModel, got {type(model).__name__}")
        if role not in ("device", "cloud"):
            raise ModelError(f"role {role!r} is not 'device' or 'cloud'")
        variants = model.variants
        if not variants:
            raise ModelError("the model has no variants: nothing was learned")
        if variant is None:
            variant = "cloud" if "cloud" in variants else variants[0]
        elif variant not in variants:
            raise ModelError(f"variant {variant!r} is not in the model (it has {variants})")
        key = (id(model), role, variant)
        hit = _VIEWS.get(key)
        if hit is not None and hit.model is model:
            _VIEWS.move_to_end(key)
            return hit
        view = cls(model, role, variant, frozenset({"0x7b"}) if role == "cloud" else frozenset())
        view._resolve(model)
        _VIEWS[key] = view
        while len(_VIEWS) > _VIEW_CACHE_SIZE:
            _VIEWS.popitem(last=False)
        return view

    def _order(self, model: DeviceModel) -> list[str]:
        return [self.variant, *(v for v in model.variants if v != self.variant)]

    def _resolve(self, model: DeviceModel) -> None:
        order = self._order(model)
        rank = {v: i for i, v in enumerate(order)}
        if self.role == "device":
            acks = [
                (rank.get(ex.variant, 99), ex.request != "0x73", r)
                for ex in model.exchanges
                if ex.role == "device" and ex.request.startswith("0x73")
                for r in ex.responses
                if r.key == "0x7b"
            ]
            if not acks:
                raise ModelError("the model has no 0x7b answer to a 0x73: cannot ack commands")
            self.ack = _plan(min(acks, key=lambda a: a[:2])[2], "device")
            reports = [
                (rank.get(ex.variant, 99), r)
                for ex in model.exchanges
                if ex.role == "device"
                for r in ex.responses
                if r.key == "0x83:fa:db"
            ]
            if reports:
                self.report = _plan(min(reports, key=lambda a: a[0])[1], "device")
        for v in order:
            beh = model.behaviour.get(v)
            if beh is None:
                continue
            self.heartbeat = self.heartbeat or (beh.heartbeat_idle or None)
            self.status_interval = self.status_interval or (beh.status_interval or None)
            self.reconnect = self.reconnect or (beh.hello_retry or None)
            if not self.scripts and beh.connect_scripts:
                self.scripts = list(beh.connect_scripts)

    def acks(self, plans: tuple[ResponsePlan, ...] | None) -> tuple[ResponsePlan, ...]:
        """The 0x7b among ``plans``, else the model's general 0x7b answer to a 0x73."""
        got = tuple(p for p in plans or () if p.key == "0x7b")
        return got or ((self.ack,) if self.ack is not None else ())

    def split(self, key: str) -> CommandPlans:
        """``plans(key)`` for a 0x73 request, split by case (cached)."""
        got = self._splits.get(key)
        if got is None:
            plans = self.plans(key) or ()
            got = CommandPlans(
                plans or self.acks(None),
                tuple(p for p in plans if p.key != "0x83:fa:db") or self.acks(None),
                self.acks(plans),
                any(p.key.startswith("0x73:f9:") for p in plans),
            )
            if len(self._splits) < _PLAN_CACHE_SIZE:
                self._splits[key] = got
        return got

    def plans(self, key: str) -> tuple[ResponsePlan, ...] | None:
        """The responses to a request key, in learned order, or None when nothing answers."""
        try:
            return self._plans[key]
        except KeyError:
            pass
        ex = self.model.exchange(key, self.role, self.variant)
        if ex is not None and key in self.strict_keys and ex.variant != self.variant:
            ex = None
        got = None if ex is None else tuple(_plan(r, self.role) for r in ex.responses)
        if len(self._plans) < _PLAN_CACHE_SIZE:
            self._plans[key] = got
        return got


_VIEWS: OrderedDict[tuple[int, str, str], ModelView] = OrderedDict()
