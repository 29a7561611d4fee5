# Pairing a candidate's responses with its requests, checked against the reference exchanges.
#
# Strategy: walk each candidate flow in time order (stable, so stream order holds on equal
# timestamps).  A packet whose kind has an exchange in the reference variant opens a pending
# request expecting that exchange's responses.  A packet of an expected response kind is
# given to the oldest pending request whose echo fields it copies (the same rule as the
# learner, replay/model/learn.py); when none matches, a response the reference *always* sends
# falls back to the oldest request still waiting for it (FIFO), so a wrong echo is reported
# as a wrong echo rather than as a missing answer.  In a flow that mixes connections (text
# logs without conn ids) a fallback is only taken when exactly one request waits, and a pair
# with several equally good requests is kept for the field checks but gives no latency sample.
# Each pair is checked field by field with the response template's roles: echo fields must
# copy the request, constants must match (volatile roles -- identity, counter values, state,
# clock, sequence bytes -- are never compared here); responses must come in the learned
# order; a request whose always-sent response never came while the peer kept talking is
# reported as unanswered.
from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

from cyncsim.replay.capture.model import Flow, FlowPacket
from cyncsim.replay.conformance.reference import Reference, other_side
from cyncsim.replay.conformance.report import ConformanceFinding, finding
from cyncsim.replay.describe import request_key
from cyncsim.replay.model import ExchangeModel, ResponseModel, TemplateField
from cyncsim.replay.model.learn import MAX_WAIT, status_answers_command

__all__ = ["ALWAYS", "Sample", "pair_flow", "variant_exchange"]

ALWAYS = 0.95  # a response with at least this share is one the reference always sends
MIN_CONSTANT_SAMPLES = 5  # below this, a differing "constant" is only a warning
# Volatile fields: never compared as constants even where the reference's values never varied
# (ids, message ids, the inner sequence, the status tick, clocks); echoes of them still are.
VOLATILE = frozenset({"device_id", "msg_id", "seq", "tick", "time"})
_STATUS_KEY = "0x83:fa:db"


@dataclass(frozen=True, slots=True)
class Sample:
    """One candidate latency: request -> the ``occurrence``-th response of a kind."""

    variant: str
    request: str
    response: str
    occurrence: int
    role: str
    latency: float
    flow: str
    request_index: int
    response_index: int
    ts: float  # when the response was sent
    exact: bool  # from a flow that is one connection (service times need that)


@dataclass(slots=True)
class _Pending:
    index: int
    fp: FlowPacket
    raw: bytes
    key: str
    ex: ExchangeModel
    timed: bool  # the exchange is for exactly this kind (not a by-type fallback)
    expected: Counter[str]
    got: Counter[str] = field(default_factory=Counter)
    ordered: bool = True  # no response_order finding yet for this request
    deadline: float = 0.0  # by when the responses it always gets are due

    @property
    def side(self) -> str:
        return self.fp.sender

    def response(self, key: str, occurrence: int) -> ResponseModel | None:
        same = [r for r in self.ex.responses if r.key == key]
        if not same:
            return None
        return same[min(occurrence, len(same) - 1)]

    def always(self) -> list[tuple[str, int, ResponseModel]]:
        """(key, occurrence, model) of the responses always sent, in the learned order."""
        seen: Counter[str] = Counter()
        out = []
        for r in self.ex.responses:
            occ = seen[r.key]
            seen[r.key] += 1
            if r.share >= ALWAYS:
                out.append((r.key, occ, r))
        return out

    def missing(self) -> list[tuple[str, int, ResponseModel]]:
        return [(k, o, r) for k, o, r in self.always() if self.got[k] <= o]

    def is_always(self, key: str) -> bool:
        return any(k == key for k, _, _ in self.always())


def variant_exchange(ref: Reference, key: str, role: str, variant: str) -> ExchangeModel | None:
    """The exchange of this kind in this variant, else of its packet type; never another variant.

    (A cloud answers a device's unexpected 0x7B with 0x78; a local server does not: borrowing
    across variants would turn that into false findings.)
    """
    for want in (key, key.split(":", 1)[0]):
        for ex in ref.model.exchanges:
            if ex.request == want and ex.role == role and ex.variant == variant:
                return ex
    return None


def _echo_ok(p: _Pending, key: str, raw: bytes) -> bool:
    if key == _STATUS_KEY:
        return status_answers_command(p.fp.packet, raw)
    rm = p.response(key, p.got[key])
    if rm is None:
        return False
    for f in rm.template.fields:
        if f.role != "echo":
            continue
        w = f.end - f.start
        if p.raw[f.source : f.source + w] != raw[f.start : f.end]:
            return False
    return True


def _hex(data: bytes) -> str:
    return data.hex(" ")


FIELD_WINDOW = 16  # bytes of a long field shown around its first difference


def field_pair(want: bytes, got: bytes) -> tuple[str, str]:
    """Expected and actual hex of a field, a long one cut to the bytes around its first
    difference (a 773-byte mesh table is one finding, not two screens of hex)."""
    if max(len(want), len(got)) <= FIELD_WINDOW:
        return _hex(want), _hex(got)
    common = min(len(want), len(got))
    first = next((k for k in range(common) if want[k] != got[k]), common)
    start = max(0, first - FIELD_WINDOW // 4)

    def cut(value: bytes) -> str:
        end = min(len(value), start + FIELD_WINDOW)
        return f"(bytes {start}-{end - 1} of {len(value)}) {_hex(value[start:end])}"

    return cut(want), cut(got)


class _FlowPairer:
    def __init__(self, flow: Flow, ref: Reference, variant: str) -> None:
        self.flow = flow
        self.ref = ref
        self.variant = variant
        self.samples: list[Sample] = []
        self.findings: list[ConformanceFinding] = []
        self.pending: list[_Pending] = []
        self.ts_by_sender: dict[str, list[float]] = {}
        self.keys_by_sender: dict[tuple[str, str], list[float]] = {}
        for fp in flow.packets:
            self.ts_by_sender.setdefault(fp.sender, []).append(fp.ts)
            k = (fp.sender, request_key(fp.packet))
            self.keys_by_sender.setdefault(k, []).append(fp.ts)
        for v in self.ts_by_sender.values():
            v.sort()
        for v in self.keys_by_sender.values():
            v.sort()

    def run(self) -> None:
        flow = self.flow
        order = sorted(range(len(flow.packets)), key=lambda i: flow.packets[i].ts)
        for i in order:
            fp = flow.packets[i]
            for p in [p for p in self.pending if fp.ts - p.fp.ts > MAX_WAIT]:
                self._close(p)
            raw = fp.packet.encode()
            key = request_key(fp.packet)
            if not self._as_response(i, fp, key, raw) and not self.ref.known(fp.sender, key):
                self._unknown(i, fp, key, raw)
            ex = variant_exchange(self.ref, key, other_side(fp.sender), self.variant)
            if ex is not None:
                expected = Counter(r.key for r in ex.responses)
                p = _Pending(i, fp, raw, key, ex, ex.request == key, expected)
                slowest = max((r.latency.values[-1] for _, _, r in p.always() if r.latency),
                              default=0.0)  # fmt: skip
                p.deadline = fp.ts + min(MAX_WAIT, max(0.5, 2.0 * slowest))
                self.pending.append(p)
        for p in list(self.pending):
            self._close(p)

    # ------------------------------------------------------------------ responses
    def _as_response(self, i: int, fp: FlowPacket, key: str, raw: bytes) -> bool:
        cands = [p for p in self.pending if p.side != fp.sender and p.got[key] < p.expected[key]]
        if not cands:
            return False
        matched = [p for p in cands if _echo_ok(p, key, raw)]
        fallback = [p for p in cands if p.is_always(key)]
        ambiguous = False
        chosen: _Pending | None
        if matched:
            chosen = matched[0]
            ambiguous = not self.flow.exact and len(matched) > 1
        elif fallback and (self.flow.exact or len(fallback) == 1):
            chosen = fallback[0]
        else:
            return False
        occ = chosen.got[key]
        chosen.got[key] += 1
        rm = chosen.response(key, occ)
        assert rm is not None  # key is expected, so the exchange has a response of it
        if chosen.timed and not ambiguous:
            self.samples.append(
                Sample(self.variant, chosen.key, key, occ, chosen.ex.role,
                       round(fp.ts - chosen.fp.ts, 9), self.flow.id, chosen.index, i, fp.ts,
                       self.flow.exact)
            )  # fmt: skip
        self._check_order(chosen, key, occ, i, fp, raw)
        self._check_fields(chosen, rm, i, fp, raw)
        if not any(chosen.got[k] < n for k, n in chosen.expected.items()):
            self._close(chosen)
        return True

    def _check_order(
        self, p: _Pending, key: str, occ: int, i: int, fp: FlowPacket, raw: bytes
    ) -> None:
        if not p.ordered:
            return
        before: list[str] = []  # responses always sent earlier in the learned order, missing
        seen: Counter[str] = Counter()
        for r in p.ex.responses:
            o = seen[r.key]
            seen[r.key] += 1
            if r.key == key and o == occ:
                break
            if r.share >= ALWAYS and p.got[r.key] <= o:
                before.append(r.key)
        if before:
            p.ordered = False
            self.findings.append(
                finding(
                    "response_order", self.flow.id, i, fp.ts,
                    f"{key} answered {p.key} before {', '.join(before)}",
                    expected=f"{' then '.join([*before, key])}",
                    actual=f"{key} first",
                    packet_hex=_hex(raw),
                    example_hex=_hex(self.ref.closest(fp.sender, before[0], raw) or b""),
                    request_index=p.index, request=p.key,
                )
            )  # fmt: skip

    def _check_fields(
        self, p: _Pending, rm: ResponseModel, i: int, fp: FlowPacket, raw: bytes
    ) -> None:
        tpl = rm.template
        same_len = len(raw) == len(tpl.exemplar)
        echo: list[int] = []
        echo_text: list[tuple[str, str, str]] = []
        const: list[int] = []
        const_text: list[tuple[str, str, str]] = []
        for f in tpl.fields:
            if f.end > len(raw) or (not same_len and f.start >= 5):
                continue  # another length: the body layout cannot be aligned
            got = raw[f.start : f.end]
            if f.role == "echo":
                want = p.raw[f.source : f.source + (f.end - f.start)]
                if got != want:
                    echo += [f.start + k for k in range(len(got)) if k >= len(want) or
                             got[k] != want[k]]  # fmt: skip
                    where = f"request bytes {f.source}-{f.source + f.end - f.start - 1}"
                    echo_text.append((f"{f.name} ({where})", *field_pair(want, got)))
            elif f.role == "constant" and same_len and f.name.split("[")[0] not in VOLATILE:
                want = tpl.exemplar[f.start : f.end]
                if got != want:
                    const += [f.start + k for k in range(len(got)) if got[k] != want[k]]
                    const_text.append((f.name, *field_pair(want, got)))
        example = self.ref.closest(fp.sender, rm.key, raw) or tpl.exemplar
        if echo:
            self.findings.append(
                finding(
                    "echo_mismatch", self.flow.id, i, fp.ts,
                    f"{rm.key} answering {p.key} does not copy "
                    + ", ".join(name for name, _, _ in echo_text),
                    expected="; ".join(f"{n} = {w}" for n, w, _ in echo_text),
                    actual="; ".join(f"{n} = {g}" for n, _, g in echo_text),
                    packet_hex=_hex(raw), example_hex=_hex(_render(example, p.raw, tpl.fields)),
                    offsets=tuple(echo), request_index=p.index, request=p.key,
                )
            )  # fmt: skip
        if const:
            weak = rm.latency.count < MIN_CONSTANT_SAMPLES
            self.findings.append(
                finding(
                    "constant_mismatch", self.flow.id, i, fp.ts,
                    f"{rm.key} answering {p.key}: constant "
                    + ", ".join(n for n, _, _ in const_text) + " differs"
                    + (f" (constant in only {rm.latency.count} reference samples)" if weak
                       else ""),
                    severity="warning" if weak else None,
                    expected="; ".join(f"{n} = {w}" for n, w, _ in const_text),
                    actual="; ".join(f"{n} = {g}" for n, _, g in const_text),
                    packet_hex=_hex(raw), example_hex=_hex(example),
                    offsets=tuple(const), request_index=p.index, request=p.key,
                )
            )  # fmt: skip

    # ------------------------------------------------------------------ other packets
    def _unknown(self, i: int, fp: FlowPacket, key: str, raw: bytes) -> None:
        """A kind this side never sends: the wrong answer, when it is shaped like one.

        It counts as a request's missing response (and takes that response's place, so
        the FIFO pairing of later responses stays aligned) when it is the oldest waiting
        request's next missing response in all but kind: same length, and it copies the
        request's bytes where that response would (at least one echo field).
        """
        for p in self.pending:
            if p.side == fp.sender or fp.ts > p.deadline:
                continue
            missing = p.missing()
            if not missing:
                continue
            want, _, rm = missing[0]
            echo = [f for f in rm.template.fields if f.role == "echo"]
            if len(raw) != len(rm.template.exemplar) or not echo:
                continue
            if any(p.raw[f.source : f.source + f.end - f.start] != raw[f.start : f.end]
                   for f in echo):  # fmt: skip
                continue
            p.got[want] += 1
            example = _render(self.ref.closest(fp.sender, want, raw) or rm.template.exemplar,
                              p.raw, rm.template.fields)  # fmt: skip
            self.findings.append(
                finding(
                    "wrong_response", self.flow.id, i, fp.ts,
                    f"{p.key} answered with {key}, which this side never sends in the "
                    f"reference; expected {want}",
                    expected=want, actual=key, packet_hex=_hex(raw), example_hex=_hex(example),
                    offsets=tuple(k for k in range(len(raw)) if raw[k] != example[k]
                                  and not any(f.start <= k < f.end for f in rm.template.fields
                                              if f.role not in ("constant", "echo"))),
                    request_index=p.index, request=p.key,
                )
            )  # fmt: skip
            if not any(p.got[k] < n for k, n in p.expected.items()):
                self._close(p)
            return
        self._unknown_kind(i, fp, key, raw)

    def _unknown_kind(self, i: int, fp: FlowPacket, key: str, raw: bytes) -> None:
        self.findings.append(
            finding(
                "unknown_kind", self.flow.id, i, fp.ts,
                f"{fp.sender} sent {key}, a kind it never sends in the reference",
                expected="a kind the reference has from the " + fp.sender,
                actual=key, packet_hex=_hex(raw),
            )
        )  # fmt: skip

    def _close(self, p: _Pending) -> None:
        if p in self.pending:
            self.pending.remove(p)
        missing = p.missing()
        if not missing:
            return
        answerer = other_side(p.side)
        # One connection: an answer may queue behind earlier ones, so it is missing only
        # when it never came in MAX_WAIT s; mixed connections: within the answer window.
        due = p.fp.ts + MAX_WAIT if self.flow.exact else p.deadline
        later = self.ts_by_sender.get(answerer, [])
        if bisect.bisect_right(later, due) >= len(later):
            return  # the peer said nothing after the answer was due: capture or connection end
        keys = [k for k, _, _ in missing]
        if not self.flow.exact:
            # Mixed connections: only certain when no such answer came at all in the window.
            keys = [k for k in keys if not self._any_between(answerer, k, p.fp.ts, p.deadline)]
            if not keys:
                return
        example = self.ref.closest(answerer, keys[0], b"") or missing[0][2].template.exemplar
        self.findings.append(
            finding(
                "unanswered", self.flow.id, p.index, p.fp.ts,
                f"{p.key} got no {', '.join(keys)} within {due - p.fp.ts:.2f} s although "
                f"the reference always answers it and the {answerer} kept sending",
                expected=" + ".join(keys), actual="no answer", packet_hex=_hex(p.raw),
                example_hex=_hex(example), request_index=p.index, request=p.key,
            )
        )  # fmt: skip

    def _any_between(self, sender: str, key: str, lo: float, hi: float) -> bool:
        ts = self.keys_by_sender.get((sender, key), [])
        j = bisect.bisect_left(ts, lo)
        return j < len(ts) and ts[j] <= hi


def _render(example: bytes, request: bytes, fields: tuple[TemplateField, ...]) -> bytes:
    """The example with its echo fields filled from ``request``: the expected bytes."""
    out = bytearray(example)
    for f in fields:
        if f.role == "echo" and f.end <= len(out):
            w = f.end - f.start
            out[f.start : f.end] = request[f.source : f.source + w].ljust(w, b"\0")
    return bytes(out)


def pair_flow(
    flow: Flow, ref: Reference, variant: str
) -> tuple[list[Sample], list[ConformanceFinding]]:
    """Latency samples and response findings of one candidate flow."""
    pairer = _FlowPairer(flow, ref, variant)
    pairer.run()
    return pairer.samples, pairer.findings
