# Human-readable one-line summaries of packets, and the request-kind keys used everywhere.
#
# Strategy: one small function per packet layout, chosen from a table by packet class, each
# returning "key=value" text of the fields a person looks for first (ids, counters, the
# decoded command or status).  ``request_key`` gives the stable string that names a kind of
# request ("0xd3", "0x73:f8:d0") in models, diffs and reports.
from __future__ import annotations

from cyncsim.replay.payloads import (
    LightStateCommand,
    PowerCommand,
    decode_command,
    decode_status_entries,
    decode_status_report,
    decode_time_reply,
    firmware_version,
)
from cyncsim.replay.protocol import (
    AckPacket,
    CyncPacket,
    FramedPacket,
    HelloPacket,
    IdPacket,
    PacketType,
)

__all__ = ["describe", "request_key"]


def request_key(pkt: CyncPacket) -> str:
    """``0xd3`` for plain packets, ``0x73:f8:d0`` for framed ones (type, kind, opcode)."""
    if isinstance(pkt, FramedPacket) and pkt.frame is not None:
        return f"0x{pkt.type:02x}:{pkt.frame.kind:02x}:{pkt.frame.opcode:02x}"
    return f"0x{pkt.type:02x}"


def _target(t: int) -> str:
    return f"group {t - 0x8000}" if t >= 0x8000 else f"node {t}"


def _framed(pkt: FramedPacket) -> str:
    head = f"id={pkt.device_id.hex()} msg={pkt.msg_id.hex()}"
    f = pkt.frame
    if f is None:
        return f"{head} malformed frame ({pkt.defect}) {len(pkt.payload)}B"
    parts = [head, f"seq={f.seq.hex()} {f.kind:02x} {f.opcode:02x} len={len(f.data)}"]
    cmd = decode_command(f)
    if isinstance(cmd, PowerCommand):
        parts.append(f"power {_target(cmd.target)} {'on' if cmd.on else 'off'}")
    elif isinstance(cmd, LightStateCommand):
        vals = []
        if cmd.brightness != 0xFF:
            vals.append(f"bri={cmd.brightness}")
        if cmd.color_temp == 0xFE:
            vals.append("rgb=" + "".join(f"{c:02x}" for c in cmd.rgb))
        elif cmd.color_temp != 0xFF:
            vals.append(f"ct={cmd.color_temp}")
        parts.append(f"light {_target(cmd.target)} {' '.join(vals) or 'no change'}")
    status = decode_status_report(pkt)
    if status is not None:
        parts.append(
            f"status node {status.node_id} {'on' if status.on else 'off'} "
            f"bri={status.brightness} ct={status.color_temp}"
        )
    fw = firmware_version(pkt)
    if fw is not None:
        parts.append(f"firmware {fw[0]} {fw[1]}")
    return " ".join(parts)


def describe(pkt: CyncPacket) -> str:
    """Key fields of a packet as one line of text."""
    if isinstance(pkt, FramedPacket):
        return _framed(pkt)
    if isinstance(pkt, HelloPacket):
        return f"id={pkt.device_id.hex()} auth={pkt.auth_code.decode('ascii', 'replace')}"
    if isinstance(pkt, AckPacket):
        return f"msg={pkt.msg_id.hex()}"
    if isinstance(pkt, IdPacket):
        text = f"id={pkt.device_id.hex()} msg={pkt.msg_id.hex()}"
        if pkt.type == PacketType.STATUS:
            entries = decode_status_entries(pkt)
            if entries:
                text += f" {len(entries)} status entries"
            elif pkt.payload:
                text += f" body {pkt.payload[:2].hex()}.. {len(pkt.payload)}B"
            else:
                text += " empty"
        elif pkt.payload:
            text += f" +{len(pkt.payload)}B"
        return text
    t = decode_time_reply(pkt)
    if t is not None:
        return (
            f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}"
            f" wd={t.weekday} utc{t.utc_offset_hhmm:+05d}"
        )
    return ""
