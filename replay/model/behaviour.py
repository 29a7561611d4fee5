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

from replay.capture.model import CLOUD, DEVICE, Flow
from replay.describe import request_key
from replay.model.dist import Distribution
from replay.payloads import decode_status_entries, decode_status_report, firmware_version
from replay.protocol import HelloPacket, IdPacket, PacketType

__all__ = ["Behaviour", "DeviceIdentity", "learn_behaviour", "learn_devices"]

CONNECT_SPAN = 10.0  # seconds after a hello that count as the connect sequence


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
    connect: list[tuple[str, float]] = field(default_factory=list)  # (device key, delay)
    connect_count: int = 0


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
        seq = tuple(
            request_key(fp.packet)
            for fp in pkts
            if fp.sender == DEVICE and fp is not hello and fp.ts - hello.ts <= CONNECT_SPAN
        )
        scripts[seq] += 1
        delays[seq].append(
            [
                fp.ts - hello.ts
                for fp in pkts
                if fp.sender == DEVICE and fp is not hello and fp.ts - hello.ts <= CONNECT_SPAN
            ]
        )
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
    if scripts:
        best = max(scripts, key=lambda s: (scripts[s], len(s), s))
        first = delays[best][0]
        beh.connect = [(k, round(d, 6)) for k, d in zip(best, first, strict=True)]
        beh.connect_count = scripts[best]
    return beh


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
