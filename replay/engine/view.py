# A learned model as one role in one variant sees it: response plans by request key, the
# answers a device gives to every command, and the behaviour distributions.
#
# Strategy: a ModelView is built once per (model, role, variant) and shared by every engine
# using it (a fleet of 10,000 devices holds one; a small LRU keyed by the model's identity).
# Plans are resolved lazily per request key and cached (bounded), each response's template
# compiled once (replay/engine/templates.py); a device's 0x7B carries the learned stall process
# (replay/engine/_stalls.py) when the model has one.  Behaviour distributions fall back from the
# view's variant to the other variants, then to documented defaults (PROTOCOL.md sections
# 10.2 and 10.3).
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace

from cyncsim.replay.engine._stalls import ACK, StallPlan, stall_plan
from cyncsim.replay.engine.templates import CompiledTemplate
from cyncsim.replay.errors import ModelError
from cyncsim.replay.model import DeviceModel, Distribution, ResponseModel
from cyncsim.replay.model.stalls import StallModel

__all__ = [
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_RECONNECT_S",
    "CommandPlans",
    "ModelView",
    "ResponsePlan",
    "frame_key",
]

DEFAULT_HEARTBEAT_S = 21.0  # PROTOCOL.md 10.2: 0xD3 after ~21 s without traffic
DEFAULT_RECONNECT_S = 15.0  # PROTOCOL.md 10.3: unanswered devices re-sent 0x23 every 15 s
_VIEW_CACHE_SIZE = 16
_PLAN_CACHE_SIZE = 1024
_KEYS: dict[tuple[int, int], str] = {}


def frame_key(kind: int, opcode: int) -> str:
    """request_key of a 0x73 with this frame kind and opcode (cached)."""
    key = _KEYS.get((kind, opcode))
    if key is None:
        key = f"0x73:{kind:02x}:{opcode:02x}"
        if len(_KEYS) < 4096:
            _KEYS[(kind, opcode)] = key
    return key


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    """One learned response of an exchange: its template and the delay to sample."""

    key: str
    template: CompiledTemplate
    delay: Distribution  # queued: service time; otherwise latency from the request
    share: float
    queued: bool = False  # FIFO behind the previous response of this kind
    stall: StallPlan | None = None  # a device's 0x7b under the learned stalls (_stalls.py)


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

    ``plans(key)`` follows DeviceModel.exchange (the key in this variant; when only another
    variant has it, this variant's sibling of the same packet type with the same response
    kinds, then the other variant's; then the bare packet type); request keys in
    ``strict_keys`` use this variant's exchange only.
    """

    model: DeviceModel
    role: str
    variant: str
    strict_keys: frozenset[str] = frozenset()
    _plans: dict[str, tuple[ResponsePlan, ...] | None] = field(default_factory=dict)
    _splits: dict[str, CommandPlans] = field(default_factory=dict)
    _frame_splits: dict[int, CommandPlans] = field(default_factory=dict)
    ack: ResponsePlan | None = None  # the 0x7b answer to any 0x73 (device role)
    report: ResponsePlan | None = None  # a learned 0x83 fa db status template
    heartbeat: Distribution | None = None
    status_interval: Distribution | None = None
    reconnect: Distribution | None = None  # the hello retry while a 0x23 is unanswered
    spread: Distribution | None = None  # connection starts after the first (reconnect wave)
    scripts: list[tuple[int, list[tuple[str, float]]]] = field(default_factory=list)
    stalls: StallModel | None = None  # device role: this variant's, else another's
    _floors: dict[str, float] = field(default_factory=dict)  # answer key -> answer_floor

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
            if self.role == "device" and self.stalls is None:
                self.stalls = model.stalls.get(v)
            beh = model.behaviour.get(v)
            if beh is None:
                continue
            self.heartbeat = self.heartbeat or (beh.heartbeat_idle or None)
            self.status_interval = self.status_interval or (beh.status_interval or None)
            self.reconnect = self.reconnect or (beh.hello_retry or None)
            self.spread = self.spread or (beh.connect_spread or None)
            if not self.scripts and beh.connect_scripts:
                self.scripts = list(beh.connect_scripts)

    def acks(self, plans: tuple[ResponsePlan, ...] | None) -> tuple[ResponsePlan, ...]:
        """The 0x7b among ``plans``, else the model's general 0x7b answer to a 0x73."""
        got = tuple(p for p in plans or () if p.key == "0x7b")
        return got or ((self.ack,) if self.ack is not None else ())

    def frame_split(self, kind: int, opcode: int) -> CommandPlans:
        """``split(frame_key(kind, opcode))``, cached by the two bytes (once per command)."""
        got = self._frame_splits.get(kind << 8 | opcode)
        if got is None:
            got = self.split(frame_key(kind, opcode))
            if len(self._frame_splits) < _PLAN_CACHE_SIZE:
                self._frame_splits[kind << 8 | opcode] = got
        return got

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

    def answer_floor(self, key: str) -> float:
        """The smallest delay (s, unscaled) this view can draw for an answer of ``key``: the
        minimum over every learned response of that key to any request of the view's role (0
        when none is learned, e.g. the device's own 0x43/0xd3 or raw writes)."""
        got = self._floors.get(key)
        if got is None:
            plans = [self.ack, self.report]
            for ex in self.model.exchanges:
                if ex.role == self.role:
                    plans += self.plans(ex.request) or ()
            lows = [p.delay.values[0] for p in plans if p is not None and p.key == key and p.delay]
            got = self._floors[key] = max(0.0, min(lows, default=0.0))
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
        stall = None if ex is None or self.stalls is None else stall_plan(ex, self.stalls)
        if got is not None and stall is not None:
            got = tuple(replace(p, stall=stall) if p.key == ACK and p.queued else p for p in got)
        if len(self._plans) < _PLAN_CACHE_SIZE:
            self._plans[key] = got
        return got


_VIEWS: OrderedDict[tuple[int, str, str], ModelView] = OrderedDict()
