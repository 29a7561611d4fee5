# Spontaneous device behaviour: heartbeat idle time, 0x43 cadence, connect sequence,
# reconnects, and the identities of the devices seen.
#
# Strategy: exact flows (one connection each) give per-connection measurements: the idle
# time before each 0xD3 is the time since the last packet in either direction.  A flow that
# mixes connections (text logs without conn ids) cannot say which device was idle; there the
# heartbeat is estimated from the aggregate rate (devices x span / pings) and labelled so.
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from cyncsim.replay.capture.model import CLOUD, DEVICE, Flow, FlowPacket
from cyncsim.replay.describe import request_key
from cyncsim.replay.model.dist import Distribution
from cyncsim.replay.payloads import decode_status_entries, decode_status_report, firmware_version
from cyncsim.replay.protocol import HelloPacket, IdPacket, PacketType

__all__ = ["Behaviour", "DeviceIdentity", "learn_behaviour", "learn_devices"]

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


def learn_behaviour(variant: str, flows: list[Flow]) -> Behaviour:
    beh = Behaviour(variant)
    idle: list[float] = []
    status_gaps: list[float] = []
    aggregate: list[float] = []
    scripts: Counter[tuple[str, ...]] = Counter()
    delays: dict[tuple[str, ...], list[list[float]]] = defaultdict(list)
    hellos: dict[bytes, list[tuple[float, bool]]] = defaultdict(list)
    for flow in flows:
        pkts = sorted(flow.packets, key=lambda fp: fp.ts)
        if not pkts:
            continue
        if not flow.exact:
            pings = sum(1 for fp in pkts if fp.sender == DEVICE and fp.packet.type == 0xD3)
            devices = {fp.packet.device_id for fp in pkts if isinstance(fp.packet, HelloPacket)}
            span = pkts[-1].ts - pkts[0].ts
            if pings and devices:
                aggregate.append(span * len(devices) / pings)
            # Connections are mixed: only packets that carry the device's id can be told
            # apart, so status cadence and connect sequence use those alone.
            last_by_dev: dict[bytes, float] = {}
            for fp in pkts:
                if fp.sender == DEVICE and fp.packet.type == PacketType.STATUS:
                    dev = getattr(fp.packet, "device_id", b"")
                    if dev in last_by_dev:
                        status_gaps.append(fp.ts - last_by_dev[dev])
                    last_by_dev[dev] = fp.ts
            for i, fp in enumerate(pkts):
                if isinstance(fp.packet, HelloPacket):
                    dev_id = fp.packet.device_id
                    hellos[dev_id].append((fp.ts, True))
                    later = [
                        q
                        for q in pkts[i + 1 :]
                        if q.ts - fp.ts <= CONNECT_SPAN
                        and q.sender == DEVICE
                        and isinstance(q.packet, IdPacket)
                        and q.packet.device_id == dev_id
                    ]
                    _add_script(scripts, delays, fp.ts, later)
            continue
        prev_ts: float | None = None
        last_status: float | None = None
        for fp in pkts:
            if fp.sender == DEVICE and fp.packet.type == PacketType.PING and prev_ts is not None:
                idle.append(fp.ts - prev_ts)
            if fp.sender == DEVICE and fp.packet.type == PacketType.STATUS:
                if last_status is not None:
                    status_gaps.append(fp.ts - last_status)
                last_status = fp.ts
            prev_ts = fp.ts
        hello = next((fp for fp in pkts if isinstance(fp.packet, HelloPacket)), None)
        if hello is None:
            continue
        assert isinstance(hello.packet, HelloPacket)
        answered = any(fp.sender == CLOUD for fp in pkts)
        hellos[hello.packet.device_id].append((hello.ts, answered))
        if not answered:
            continue
        later = [
            fp
            for fp in pkts
            if fp.sender == DEVICE and fp is not hello and fp.ts - hello.ts <= CONNECT_SPAN
        ]
        _add_script(scripts, delays, hello.ts, later)
    if idle:
        beh.heartbeat_idle = Distribution.from_samples(idle, method="per-connection")
    elif aggregate:
        beh.heartbeat_idle = Distribution.from_samples(aggregate, method="aggregate-rate")
    if status_gaps:
        beh.status_interval = Distribution.from_samples(status_gaps)
    retries = [
        b[0] - a[0]
        for seen in hellos.values()
        for a, b in zip(sorted(seen), sorted(seen)[1:], strict=False)
        if not a[1]
    ]
    if retries:
        beh.hello_retry = Distribution.from_samples(retries)
    ranked = sorted(scripts, key=lambda s: (-scripts[s], s))[:MAX_SCRIPTS]
    beh.connect_scripts = [
        (scripts[seq], [(k, round(d, 6)) for k, d in zip(seq, delays[seq][0], strict=True)])
        for seq in ranked
    ]
    return beh


def _add_script(
    scripts: Counter[tuple[str, ...]],
    delays: dict[tuple[str, ...], list[list[float]]],
    start: float,
    later: list[FlowPacket],
) -> None:
    own = [fp for fp in later if not _is_answer(request_key(fp.packet))]
    seq = tuple(request_key(fp.packet) for fp in own)
    scripts[seq] += 1
    delays[seq].append([fp.ts - start for fp in own])


def _is_answer(key: str) -> bool:
    return key in ("0x7b", "0xab") or key.startswith("0x73:f9:")


def learn_devices(flows_by_variant: dict[str, list[Flow]]) -> list[DeviceIdentity]:
    out: dict[bytes, DeviceIdentity] = {}
    for variant, flows in sorted(flows_by_variant.items()):
        for flow in flows:
            for fp in flow.packets:
                pkt = fp.packet
                if fp.sender != DEVICE:
                    continue
                if isinstance(pkt, HelloPacket):
                    if pkt.device_id not in out:
                        out[pkt.device_id] = DeviceIdentity(pkt.device_id, pkt.auth_code, variant)
                    continue
                if not isinstance(pkt, IdPacket):
                    continue
                dev = out.get(pkt.device_id)
                if dev is None:
                    continue
                fw = firmware_version(pkt)
                if fw is not None:
                    dev.firmware.setdefault(fw[0], fw[1])
                for entry in decode_status_entries(pkt):
                    if entry.index == 5 and dev.mesh_node is None:
                        dev.mesh_node = entry.node_id
                        dev.state = {
                            "on": int(entry.on),
                            "brightness": entry.brightness,
                            "color_temp": entry.color_temp,
                            "r": entry.rgb[0],
                            "g": entry.rgb[1],
                            "b": entry.rgb[2],
                        }
                status = decode_status_report(pkt)
                if status is not None and dev.mesh_node is None:
                    dev.mesh_node = status.node_id
                    dev.state = {
                        "on": int(status.on),
                        "brightness": status.brightness,
                        "color_temp": status.color_temp,
                        "r": status.rgb[0],
                        "g": status.rgb[1],
                        "b": status.rgb[2],
                    }
    return [out[k] for k in sorted(out)]
