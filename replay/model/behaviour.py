# Spontaneous device behaviour: heartbeat idle time, 0x43 cadence, connect sequence,
# reconnects (hello retry, the spread of connection starts), and the devices seen.
#
# Strategy: exact flows (one connection each) give per-connection measurements: the idle
# time before each 0xD3 is the time since the last packet in either direction.  A flow that
# mixes connections (text logs without conn ids) cannot say which device was idle; there the
# heartbeat is estimated from the aggregate rate (devices x span / pings) and labelled so.
#
# Learned packet by packet (BehaviourLearner.feed, like learn.ExchangeLearner): per flow only
# the last times, the hello and the packets of its first CONNECT_SPAN seconds are kept; the
# measurements go to bounded dist.Samples; per device the first firmware and state seen.
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from cyncsim.replay.capture.model import DEVICE, Flow, FlowPacket
from cyncsim.replay.describe import request_key
from cyncsim.replay.model.dist import Distribution, Samples
from cyncsim.replay.payloads import decode_status_entries, decode_status_report, firmware_version
from cyncsim.replay.protocol import (
    FramedPacket,
    FrameKind,
    HelloPacket,
    IdPacket,
    PacketType,
)

__all__ = ["Behaviour", "BehaviourLearner", "DeviceIdentity"]

CONNECT_SPAN = 10.0  # seconds after a hello that count as the connect sequence
MAX_SCRIPTS = 8


@dataclass(slots=True)
class DeviceIdentity:
    device_id: bytes
    auth_code: bytes
    variant: str
    firmware: dict[str, str] = field(default_factory=dict)
    mesh_node: int | None = None
    state: dict[str, int] = field(default_factory=dict)

    def to_obj(self) -> dict[str, object]:
        return {
            "id": self.device_id,
            "auth": self.auth_code,
            "variant": self.variant,
            "firmware": dict(sorted(self.firmware.items())),
            "mesh_node": self.mesh_node,
            "state": dict(sorted(self.state.items())),
        }


@dataclass(slots=True)
class Behaviour:
    variant: str
    heartbeat_idle: Distribution = field(default_factory=Distribution)
    status_interval: Distribution = field(default_factory=Distribution)
    hello_retry: Distribution = field(default_factory=Distribution)
    # What devices sent on their own in the first CONNECT_SPAN seconds after the hello, as
    # (how many connections did exactly this, [(packet key, seconds after the hello)]),
    # most common first.  Answers to the peer's requests (0x7B, f9 results) are left out.
    connect_scripts: list[tuple[int, list[tuple[str, float]]]] = field(default_factory=list)
    # When the devices of a capture connected, relative to the first of them: each device's
    # first hello in a source (085753: 25 devices over 31 s after the proxy started), pooled
    # over the sources with two devices or more.  The reconnect wave after an outage.
    connect_spread: Distribution = field(default_factory=Distribution)


_PRE_HELLO = 256  # device packets kept from before a connection's hello (its script)
Script = tuple[tuple[str, ...], list[float]]


class _Flow:
    """What one flow keeps while it is read."""

    __slots__ = (
        "answered",
        "devices",
        "first_ts",
        "flow",
        "hello",
        "last_by_dev",
        "last_status",
        "n",
        "open",
        "pings",
        "pre",
        "prev_ts",
        "rank",
        "script",
        "scripts",
        "src",
    )  # fmt: skip

    def __init__(self, flow: Flow, rank: int) -> None:
        self.flow = flow
        self.rank = rank
        self.n = 0  # packets so far
        self.prev_ts: float | None = None
        self.first_ts: float | None = None
        self.last_status: float | None = None
        self.answered = False
        self.hello: tuple[float, bytes] | None = None
        self.pre: list[tuple[str, float]] = []  # device packets before the hello
        self.script: list[tuple[str, float]] = []  # device packets after it, within the span
        # mixed flows: hellos whose connect span is still open, finished scripts, tallies
        self.open: list[tuple[float, bytes, list[tuple[str, float]]]] = []
        self.scripts: list[tuple[float, list[tuple[str, float]]]] = []
        self.last_by_dev: dict[bytes, float] = {}
        self.pings = 0
        self.devices: set[bytes] = set()
        self.src: _Source  # set by the learner when it first sees the flow


@dataclass(slots=True)
class _Source:
    idle: Samples = field(default_factory=Samples)
    status_gaps: Samples = field(default_factory=Samples)
    aggregate: Samples = field(default_factory=Samples)
    hellos: dict[bytes, list[tuple[float, bool]]] = field(default_factory=dict)


class BehaviourLearner:
    """Spontaneous behaviour and device identities, from packets fed one at a time."""

    def __init__(self) -> None:
        self._flows: dict[int, _Flow] = {}
        self._sources: dict[str, _Source] = {}
        # per source: device id -> (identity, first firmware per kind and first state seen,
        # each with where it was seen: (flow, packet number), to take the first in order)
        self._devices: dict[str, dict[bytes, _Dev]] = {}

    def feed(self, flow: Flow, fp: FlowPacket) -> None:
        self.feed_state(self.state_of(flow), fp)

    def state_of(self, flow: Flow) -> _Flow:
        """The state ``feed_state`` takes for ``flow`` (made on its first packet)."""
        st = self._flows.get(id(flow))
        if st is None:
            st = self._flows[id(flow)] = _Flow(flow, len(self._flows))
            st.src = self._sources.setdefault(flow.source, _Source())
        return st

    def feed_state(self, st: _Flow, fp: FlowPacket) -> None:
        """``feed`` with the flow's state already looked up (the importer's hot loop)."""
        flow = st.flow
        src = st.src
        pkt = fp.packet
        ts = fp.ts
        dev_side = fp.sender == DEVICE
        st.n += 1
        if st.first_ts is None:
            st.first_ts = ts
        ptype = pkt.type
        if dev_side:  # only a hello, a 0x43 or a report frame can tell who a device is
            if isinstance(pkt, FramedPacket):
                f = pkt.frame
                if (f is not None and f.kind == FrameKind.REPORT) or ptype == PacketType.STATUS:
                    self._identity(flow.source, pkt, st)
            elif isinstance(pkt, HelloPacket) or (
                ptype == PacketType.STATUS and isinstance(pkt, IdPacket)
            ):
                self._identity(flow.source, pkt, st)
        if not flow.exact:
            self._mixed(st, src, fp)
            st.prev_ts = ts
            return
        if not dev_side:
            st.prev_ts = ts
            st.answered = True
            return
        if ptype == PacketType.PING and st.prev_ts is not None:
            src.idle.values.append(ts - st.prev_ts)  # spilled by spill(), once per chunk
        elif ptype == PacketType.STATUS:
            if st.last_status is not None:
                src.status_gaps.values.append(ts - st.last_status)
            st.last_status = ts
        st.prev_ts = ts
        if st.hello is None:
            if isinstance(pkt, HelloPacket):
                st.hello = (ts, pkt.device_id)
                st.script = [(k, t) for k, t in st.pre if t - ts <= CONNECT_SPAN]
                st.pre = []
            elif len(st.pre) < _PRE_HELLO:
                st.pre.append((request_key(pkt), ts))
        elif ts - st.hello[0] <= CONNECT_SPAN:
            st.script.append((request_key(pkt), ts))

    def spill(self) -> None:
        """Fold the sample buffers past their limit into sketches (bounded memory)."""
        for src in self._sources.values():
            src.idle.spill()
            src.status_gaps.spill()
            src.aggregate.spill()

    def _mixed(self, st: _Flow, src: _Source, fp: FlowPacket) -> None:
        pkt, ts = fp.packet, fp.ts
        while st.open and ts - st.open[0][0] > CONNECT_SPAN:
            start, _, later = st.open.pop(0)
            st.scripts.append((start, later))
        if fp.sender != DEVICE:
            return
        if pkt.type == PacketType.PING:
            st.pings += 1
        if pkt.type == PacketType.STATUS:
            dev = getattr(pkt, "device_id", b"")
            if dev in st.last_by_dev:
                src.status_gaps.add(ts - st.last_by_dev[dev])
            st.last_by_dev[dev] = ts
        if isinstance(pkt, IdPacket):
            for _, dev_id, later in st.open:
                if pkt.device_id == dev_id:
                    later.append((request_key(pkt), ts))
        if isinstance(pkt, HelloPacket):
            st.devices.add(pkt.device_id)
            src.hellos.setdefault(pkt.device_id, []).append((ts, True))
            st.open.append((ts, pkt.device_id, []))

    def _identity(self, source: str, pkt: object, st: _Flow) -> None:
        devs = self._devices.setdefault(source, {})
        if isinstance(pkt, HelloPacket):
            got = devs.get(pkt.device_id)
            if got is None:
                devs[pkt.device_id] = _Dev(DeviceIdentity(pkt.device_id, pkt.auth_code, ""))
            elif got.identity is None:
                got.identity = DeviceIdentity(pkt.device_id, pkt.auth_code, "")
            return
        if not isinstance(pkt, IdPacket):
            return
        dev = devs.get(pkt.device_id)
        if dev is None:
            dev = devs[pkt.device_id] = _Dev(None)
        # Kept twice: the first seen at all (counts when an earlier source saw the hello)
        # and the first after this source's hello.
        fw = firmware_version(pkt)
        for seen in (dev.any, dev.after) if dev.identity is not None else (dev.any,):
            if fw is not None:
                _first(seen, fw[0], (st, st.n, fw[1]))
            if "mesh" in seen and seen["mesh"][0] is st:
                continue  # the first of this flow is known: later ones come after it
            for entry in decode_status_entries(pkt):
                if entry.index == 5:
                    state = _state(entry.on, entry.brightness, entry.color_temp, entry.rgb)
                    _first(seen, "mesh", (st, st.n, (entry.node_id, state)))
                    break
            else:
                status = decode_status_report(pkt)
                if status is not None:
                    state = _state(status.on, status.brightness, status.color_temp, status.rgb)
                    _first(seen, "mesh", (st, st.n, (status.node_id, state)))

    def finish(
        self, variants: dict[str, str], order: Sequence[Flow] = ()
    ) -> tuple[dict[str, Behaviour], list[DeviceIdentity]]:
        """Behaviour per variant and the devices; ``order``: the flows in reader order."""
        ranks = {id(f): i for i, f in enumerate(order)}
        by_variant: dict[str, list[str]] = defaultdict(list)
        for src in self._sources:  # in the order the sources were read
            by_variant[variants.get(src, "cloud")].append(src)
        flows = sorted(self._flows.values(), key=lambda f: ranks.get(id(f.flow), f.rank))
        out: dict[str, Behaviour] = {}
        for v, srcs in sorted(by_variant.items()):
            out[v] = self._behaviour(v, srcs, [f for f in flows if f.flow.source in srcs])
        devices: dict[bytes, DeviceIdentity] = {}

        def where(item: tuple[str, _Seen]) -> tuple[int, int]:
            st, n, _ = item[1]
            return ranks.get(id(st.flow), st.rank), n

        for v, srcs in sorted(by_variant.items()):
            for src in srcs:
                for dev_id, dev in self._devices.get(src, {}).items():
                    mine = devices.get(dev_id)
                    if mine is not None:
                        seen = dev.any  # the hello came in an earlier source
                    elif dev.identity is not None:
                        dev.identity.variant = v
                        mine = devices[dev_id] = dev.identity
                        seen = dev.after
                    else:
                        continue
                    for k, (_, _, value) in sorted(seen.items(), key=where):
                        if k != "mesh":
                            mine.firmware.setdefault(k, str(value))
                        elif mine.mesh_node is None and isinstance(value, tuple):
                            mine.mesh_node, mine.state = value
        return out, [devices[k] for k in sorted(devices)]

    def _behaviour(self, variant: str, srcs: list[str], flows: list[_Flow]) -> Behaviour:
        beh = Behaviour(variant)
        idle, gaps, aggregate = Samples(), Samples(), Samples()
        hellos: dict[bytes, list[tuple[float, bool]]] = defaultdict(list)
        for name in srcs:
            src = self._sources[name]
            idle.merge(src.idle)
            gaps.merge(src.status_gaps)
            for dev, seen in src.hellos.items():
                hellos[dev].extend(seen)
        scripts: Counter[tuple[str, ...]] = Counter()
        delays: dict[tuple[str, ...], list[float]] = {}
        for st in flows:
            if not st.flow.exact:
                span = (st.prev_ts or 0.0) - (st.first_ts or 0.0)
                if st.pings and st.devices:
                    aggregate.add(span * len(st.devices) / st.pings)
                done = st.scripts + [(start, later) for start, _, later in st.open]
                for start, later in done:
                    _add_script(scripts, delays, start, later)
                continue
            if st.hello is None:
                continue
            hellos[st.hello[1]].append((st.hello[0], st.answered))
            if st.answered:
                _add_script(scripts, delays, st.hello[0], st.script)
        if len(idle):
            beh.heartbeat_idle = idle.build(method="per-connection")
        elif len(aggregate):
            beh.heartbeat_idle = aggregate.build(method="aggregate-rate")
        if len(gaps):
            beh.status_interval = gaps.build()
        retries = [
            b[0] - a[0]
            for seen in hellos.values()
            for a, b in zip(sorted(seen), sorted(seen)[1:], strict=False)
            if not a[1]
        ]
        if retries:
            beh.hello_retry = Distribution.from_samples(retries)
        beh.connect_spread = _connect_spread(
            {name: self._sources[name].hellos for name in srcs},
            [(st.flow.source, st.hello) for st in flows if st.flow.exact and st.hello is not None],
        )
        ranked = sorted(scripts, key=lambda s: (-scripts[s], s))[:MAX_SCRIPTS]
        beh.connect_scripts = [
            (scripts[seq], [(k, round(d, 6)) for k, d in zip(seq, delays[seq], strict=True)])
            for seq in ranked
        ]
        return beh


_Seen = tuple[_Flow, int, object]  # (flow, packet number in it, what was seen)


class _Dev:
    """One device in one source: its hello's identity, and the first firmware and state seen
    (``any``: at all, ``after``: after the hello; each as (flow, packet number, value))."""

    __slots__ = ("after", "any", "identity")

    def __init__(self, identity: DeviceIdentity | None) -> None:
        self.identity = identity
        self.any: dict[str, _Seen] = {}
        self.after: dict[str, _Seen] = {}


def _first(seen: dict[str, _Seen], what: str, new: _Seen) -> None:
    """Keep the observation that comes first (flows in order of first packet here; finish()
    sorts by the reader's order)."""
    old = seen.get(what)
    if old is None or (old[0].rank, old[1]) > (new[0].rank, new[1]):
        seen[what] = new


def _add_script(
    scripts: Counter[tuple[str, ...]],
    delays: dict[tuple[str, ...], list[float]],
    start: float,
    later: list[tuple[str, float]],
) -> None:
    own = [(k, ts) for k, ts in later if not _is_answer(k)]
    seq = tuple(k for k, _ in own)
    scripts[seq] += 1
    delays.setdefault(seq, [ts - start for _, ts in own])


def _connect_spread(
    mixed: dict[str, dict[bytes, list[tuple[float, bool]]]],
    exact: list[tuple[str, tuple[float, bytes]]],
) -> Distribution:
    """Each device's first hello per source minus the source's first one (sources with at
    least two devices): the spread of a capture's connection starts."""
    firsts: dict[str, dict[bytes, float]] = defaultdict(dict)
    for name, hellos in mixed.items():
        for dev, seen in hellos.items():
            if seen:
                firsts[name][dev] = min(ts for ts, _ in seen)
    for name, (ts, dev) in exact:
        got = firsts[name]
        got[dev] = min(got.get(dev, ts), ts)
    offsets = [
        ts - min(devs.values()) for devs in firsts.values() if len(devs) > 1 for ts in devs.values()
    ]
    return Distribution.from_samples(offsets) if offsets else Distribution()


def _is_answer(key: str) -> bool:
    return key in ("0x7b", "0xab") or key.startswith("0x73:f9:")


def _state(on: bool, brightness: int, color_temp: int, rgb: tuple[int, int, int]) -> dict[str, int]:
    return {
        "on": int(on),
        "brightness": brightness,
        "color_temp": color_temp,
        "r": rgb[0],
        "g": rgb[1],
        "b": rgb[2],
    }
