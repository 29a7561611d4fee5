# Learned byte templates compiled for rendering: an answer is its exemplar with the fields filled in
# from the request, the engine's identity, counters, state and wall clock.
#
# Strategy: each learned Template is compiled once (a ModelView holds the compiled ones, so a fleet
# of 10,000 devices shares them) into a short list of ops over the exemplar: constant runs, echo
# ranges, identity, counter, state, clock, mesh table (adjacent constant and echo fields merged).
# Each dynamic op becomes a small closure made at compile time; rendering copies the tuple of
# constant parts, lets the closures fill their slots and joins once.  A run of state fields (a 0x83
# status) is one closure that keeps what it rendered per (node, state), so a status costs one
# lookup, not a call per field.  No code is generated.  Lengths and the frame checksum are
# recomputed with the codec's layout and ``frame_checksum`` (what a non-strict decode and a
# re-encode with checksum=None give): a fixed-size framed answer needs only its checksum, a
# variable-size one (the f9 52 mesh table) its lengths too.
from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

from cyncsim.replay.engine.state import DeviceState
from cyncsim.replay.model import Template
from cyncsim.replay.payloads import TimeReply
from cyncsim.replay.protocol import (
    FRAME_HEAD,
    FRAME_MARKER,
    FRAME_TAIL,
    HEADER,
    TIME_BODY,
    PacketType,
    frame_checksum,
)

__all__ = ["MESH_RECORD", "CompiledTemplate", "RenderContext", "finish_packet"]

MESH_RECORD = 24  # PROTOCOL.md 7.6: bytes per node record of the f9 52 mesh table
_MESH_HEAD = 6  # "1f 00 00 00 | 1f 00" before the records
_FRAMED = frozenset((PacketType.DATA, PacketType.REPORT))
# Offsets from the codec's field tables (replay/_layout.py).
_LENGTH = HEADER["length"]  # bytes after the header, BE16
_MARKER_AT = FRAME_HEAD["marker"].offset
_OPCODE_AT = FRAME_HEAD["opcode"].offset
_FRAME_LENGTH = FRAME_HEAD["frame_length"].slice  # frame data bytes, LE16
_FRAME_LENGTH0 = FRAME_HEAD["frame_length"].offset
_DATA_AT = FRAME_HEAD.end
_CHECKSUM_AT = FRAME_TAIL["checksum"].offset  # negative: from the end
_FRAME_MIN = FRAME_HEAD.end + FRAME_TAIL.size  # a whole frame: head, no data, tail
_UTC_OFFSET = TIME_BODY["utc_offset"].local  # in the 0xC8 body

# Template ops: (op, start, end, exemplar bytes of the range, name).
_CONST, _ECHO, _IDENT, _COUNTER, _STATE, _CLOCK, _MESH = range(7)
_Op = tuple[int, int, int, bytes, str]
# After the join: return as is, recompute the frame checksum, or fix lengths and checksum.
_AS_IS, _CHECKSUM, _FINISH = range(3)
_STATE_CACHE = 4096  # rendered state runs kept per template


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

    The codec's own layout (HEADER, the frame head after the ID prefix) and
    ``frame_checksum`` do the work, so the result is what decoding non-strictly and
    re-encoding with ``checksum=None`` gives (the unit tests check that), at a fraction of
    the cost.
    """
    n = len(data)
    buf = bytearray(data)
    buf[_LENGTH.slice] = (n - HEADER.size).to_bytes(_LENGTH.size, "big")
    if buf[0] in _FRAMED and n >= _FRAME_MIN and buf[_MARKER_AT] in (FRAME_MARKER, 0x00):
        length = (n - _FRAME_MIN).to_bytes(2, "little")
        buf[_FRAME_LENGTH] = length
        data_end = n + _CHECKSUM_AT
        buf[data_end] = frame_checksum(buf[_OPCODE_AT], length, bytes(buf[_DATA_AT:data_end]))
    return bytes(buf)


def _clock_body(exemplar: bytes, wall: float) -> bytes:
    """11-byte 0xC8 body for ``wall`` in the UTC offset the exemplar carries (+-hhmm)."""
    hhmm = int.from_bytes(exemplar[_UTC_OFFSET], "big", signed=True)
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


# ---------------------------------------------------------------------- dynamic parts
# A part fills one slot: part(request, ctx) -> bytes (request b"" when spontaneous).
_Part = Callable[[bytes, RenderContext], bytes]


def _echo_part(src: int, seg: bytes) -> _Part:
    end = src + len(seg)

    def echo(r: bytes, x: RenderContext) -> bytes:
        return r[src:end] if len(r) >= end else seg

    return echo


def _ident_part(name: str, seg: bytes) -> _Part:
    width = len(seg)
    if name == "auth":

        def auth(r: bytes, x: RenderContext) -> bytes:
            v = x.auth_code
            return v if len(v) == width else seg

        return auth

    def device_id(r: bytes, x: RenderContext) -> bytes:
        v = x.device_id
        return v if len(v) == width else seg

    return device_id


def _counter_part(name: str, width: int) -> _Part:
    if name == "tick" and width == 2:

        def tick(r: bytes, x: RenderContext) -> bytes:
            counters = x.counters
            v = counters.get(name, 1) & 0xFFFF
            counters[name] = (v + 1) & 0xFFFF
            return v.to_bytes(2, "little")

        return tick
    pad = bytes(width)

    def counter(r: bytes, x: RenderContext) -> bytes:
        counters = x.counters
        v = counters.get(name, 1) & 0xFFFF
        counters[name] = (v + 1) & 0xFFFF
        return (v.to_bytes(2, "big") + pad)[:width]

    return counter


def _state_part(fn: _StateFn, seg: bytes) -> _Part:
    width = len(seg)

    def state(r: bytes, x: RenderContext) -> bytes:
        s = fn(x.node, x.state)
        return s if len(s) == width else seg

    return state


def _state_block(items: list[tuple[_StateFn | None, bytes]]) -> _Part:
    """One slot for a run of state fields (and the constants between them): what they render
    depends only on the node and its state, so it is kept per (node, state) (bounded; a
    template is shared by a whole fleet) and a status costs one lookup, not a call per field."""
    cache: dict[tuple[object, ...], bytes] = {}

    def block(r: bytes, x: RenderContext) -> bytes:
        node, st = x.node, x.state
        key: tuple[object, ...] = (node, st.on, st.brightness, st.color_temp, st.rgb, st.online)
        try:
            got = cache.get(key)
        except TypeError:  # an unhashable field (a list for rgb): render it as it is
            got, key = None, ()
        if got is None:
            got = b"".join(
                seg if fn is None else (s if len(s := fn(node, st)) == len(seg) else seg)
                for fn, seg in items
            )
            if key and len(cache) < _STATE_CACHE:
                cache[key] = got
        return got

    return block


def _clock_part(seg: bytes) -> _Part:
    def clock(r: bytes, x: RenderContext) -> bytes:
        return _clock_body(seg, x.wall)

    return clock


def _mesh_part(seg: bytes) -> _Part:
    def mesh(r: bytes, x: RenderContext) -> bytes:
        return _mesh_table(seg, x.node, x.mesh)

    return mesh


def _part(op: _Op) -> _Part | None:
    """The closure filling ``op``'s slot; None for constant bytes."""
    kind, _, _, seg, name = op
    if kind == _ECHO:
        return _echo_part(int(name), seg)
    if kind == _IDENT:
        return _ident_part(name, seg)
    if kind == _COUNTER:
        return _counter_part(name, len(seg))
    if kind == _STATE:
        fn = _STATE_FIELDS.get(name)
        return None if fn is None else _state_part(fn, seg)
    if kind == _CLOCK:
        return _clock_part(seg)
    if kind == _MESH:
        return _mesh_part(seg)
    return None


def _ops(key: str, tpl: Template) -> tuple[list[_Op], bool]:
    """The template's fields as ops (adjacent constants and contiguous echoes merged), and
    whether a checksum or a variable-size part needs fixing after the join."""
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
        elif f.role == "clock" and len(seg) == TIME_BODY.size:
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
    return ops, finish


def _state_run(ops: list[_Op]) -> tuple[int, int] | None:
    """Indexes of the first and last op of the longest run of state fields (with constants
    between them) holding two state fields or more; None when there is none."""
    best: tuple[int, int] | None = None
    start = last = -1
    count = 0
    for i, op in enumerate([*ops, (_CLOCK, 0, 0, b"", "")]):  # a sentinel ends the last run
        if op[0] == _STATE and op[4] in _STATE_FIELDS:
            if start < 0:
                start, count = i, 0
            count += 1
            last = i
        elif op[0] != _CONST and start >= 0:
            if count >= 2 and (best is None or last - start > best[1] - best[0]):
                best = (start, last)
            start = -1
    return best


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """A learned template ready to render: constant parts, the closures filling the dynamic
    ones, and what to fix after the join (build with ``compile``)."""

    key: str
    exemplar: bytes
    ops: tuple[_Op, ...]
    finish: bool  # a checksum or a variable-size part: fixed after the join
    counter: str = ""  # the counter this template takes a value from ("" for none)
    parts: tuple[bytes, ...] = field(default=(), compare=False, repr=False)
    fills: tuple[tuple[int, _Part], ...] = field(default=(), compare=False, repr=False)
    post: int = field(default=_AS_IS, compare=False, repr=False)

    @classmethod
    def compile(cls, key: str, tpl: Template) -> CompiledTemplate:
        ops, finish = _ops(key, tpl)
        counter = next((op[4] for op in ops if op[0] == _COUNTER), "")
        fills = [(i, part) for i, op in enumerate(ops) if (part := _part(op)) is not None]
        slots = {i for i, _ in fills}
        parts = tuple(b"" if i in slots else op[3] for i, op in enumerate(ops))
        block = _state_run(ops)
        if block is not None:  # one slot (the run's first) renders the whole run
            first, last = block
            items = [(_STATE_FIELDS.get(op[4]) if op[0] == _STATE else None, op[3])
                     for op in ops[first : last + 1]]  # fmt: skip
            fills = [f for f in fills if not first <= f[0] <= last]
            fills.append((first, _state_block(items)))
            fills.sort(key=lambda f: f[0])
            parts = tuple(b"" if first <= i <= last else p for i, p in enumerate(parts))
        ex = tpl.exemplar
        if any(op[0] == _MESH for op in ops):
            post = _FINISH
        elif finish and len(ex) >= _FRAME_MIN and ex[0] in _FRAMED:
            post = _CHECKSUM  # same size as the exemplar: the lengths stand
        elif finish:
            post = _FINISH
        else:
            post = _AS_IS
        return cls(key, ex, tuple(ops), finish, counter, parts, tuple(fills), post)

    def render(self, request: bytes | None, ctx: RenderContext) -> bytes:
        """The response bytes for ``request`` (None: spontaneous, echoes use the exemplar)."""
        r = b"" if request is None else request
        parts = list(self.parts)
        for i, fill in self.fills:
            parts[i] = fill(r, ctx)
        d = b"".join(parts)
        post = self.post
        if post == _AS_IS:
            return d
        if post == _CHECKSUM:
            # frame_checksum(opcode, the LE16 length, data), written out: one call fewer
            cs = d[_OPCODE_AT] + d[_FRAME_LENGTH0] + d[_FRAME_LENGTH0 + 1]
            cs = (cs + sum(d[_DATA_AT:_CHECKSUM_AT])) & 0xFF
            return d[:_CHECKSUM_AT] + bytes((cs, d[-1]))
        return finish_packet(d)
