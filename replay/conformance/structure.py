# Per-packet structure checks of a candidate: encoding defects, checksums, counters.
#
# Strategy: the capture readers already decode every packet non-strictly and flag what is
# wrong (``packet.defect``), so this module only classifies: a wrong inner checksum on a
# 0x73 is an error; on a 0x83 that carries the checksum of the report just before it (the
# LED-strip firmware's stale checksum, PROTOCOL.md section 7.2) it is the known case, info,
# when the reference has such packets too; any other defect is an error unless the reference
# has the same defect.  Counters: a sender's message id must step by exactly one per packet of
# a type the reference saw counting (per flow, device id and type); the absolute value is
# never compared.  Reader findings (TLS flows, gaps, stray bytes) become capture findings.
from __future__ import annotations

from dataclasses import replace

from cyncsim.replay.capture.model import CaptureResult, Finding, Flow
from cyncsim.replay.conformance.reference import Reference
from cyncsim.replay.conformance.report import ConformanceFinding, finding
from cyncsim.replay.describe import request_key
from cyncsim.replay.protocol import FRAME_TAIL, FramedPacket, IdPacket, PacketType

__all__ = ["STALE_WINDOW", "capture_findings", "check_structure"]

STALE_WINDOW = 1.0  # seconds: a stale checksum repeats a report of the same burst
_NOTES = frozenset({"tls", "trailing_partial", "gap", "truncated", "overlap_conflict"})


def _hex(data: bytes) -> str:
    return data.hex(" ")


def check_structure(flow: Flow, ref: Reference, variant: str) -> list[ConformanceFinding]:
    out: list[ConformanceFinding] = []
    counters = ref.counters(variant)
    last_count: dict[tuple[str, bytes, int], int] = {}
    last_report: dict[tuple[str, bytes], tuple[int | None, float]] = {}
    for i, fp in enumerate(flow.packets):
        pkt = fp.packet
        raw = pkt.encode()
        if pkt.defect is not None:
            out.append(_defect(flow, i, raw, ref, last_report))
        if isinstance(pkt, FramedPacket) and pkt.type == PacketType.REPORT and pkt.frame:
            last_report[(fp.sender, pkt.device_id)] = (pkt.frame.checksum, fp.ts)
        if isinstance(pkt, IdPacket) and (fp.sender, pkt.type) in counters:
            k = (fp.sender, pkt.device_id, pkt.type)
            prev = last_count.get(k)
            if prev is not None and (pkt.counter - prev) & 0xFFFF != 1:
                want = (prev + 1) & 0xFFFF
                # The same packet with the expected counter (the message id's first two bytes).
                fixed = replace(pkt, msg_id=want.to_bytes(2, "big") + pkt.msg_id[2:]).encode()
                out.append(
                    finding(
                        "counter_skip", flow.id, i, fp.ts,
                        f"{fp.sender} 0x{pkt.type:02x} counter went from {prev} to "
                        f"{pkt.counter} (must advance by one per packet)",
                        expected=f"{want} ({want.to_bytes(2, 'big').hex(' ')})",
                        actual=f"{pkt.counter} ({pkt.msg_id[:2].hex(' ')})",
                        packet_hex=_hex(raw),
                        example_hex=_hex(fixed),
                        offsets=tuple(j for j, (a, b) in enumerate(zip(raw, fixed, strict=True))
                                      if a != b),
                        request=request_key(pkt),
                    )
                )  # fmt: skip
            last_count[k] = pkt.counter
    return out


def _defect(
    flow: Flow,
    i: int,
    raw: bytes,
    ref: Reference,
    last_report: dict[tuple[str, bytes], tuple[int | None, float]],
) -> ConformanceFinding:
    fp = flow.packets[i]
    p, ts = fp.packet, fp.ts
    key = request_key(p)
    example = _hex(ref.closest(fp.sender, key, raw) or b"")
    if p.defect == "invalid_checksum" and isinstance(p, FramedPacket) and p.frame is not None:
        want, got = p.frame.expected_checksum(), p.frame.checksum
        at = (len(raw) + FRAME_TAIL["checksum"].offset,)
        prev = last_report.get((fp.sender, p.device_id))
        stale = (
            p.type == PacketType.REPORT
            and prev is not None
            and prev[0] == got
            and ts - prev[1] <= STALE_WINDOW
        )
        if stale and ref.has_defect("invalid_checksum"):
            return finding(
                "stale_checksum_known", flow.id, i, ts,
                f"0x83 carries the previous report's checksum 0x{got:02x} (correct 0x{want:02x});"
                " the reference firmware does the same",
                expected=f"0x{want:02x}", actual=f"0x{got:02x}", packet_hex=_hex(raw),
                example_hex=example, offsets=at, request=key,
            )  # fmt: skip
        return finding(
            "bad_checksum", flow.id, i, ts,
            f"{key} inner checksum 0x{got:02x}, expected 0x{want:02x}"
            + (" (a stale checksum, but the reference never has one)" if stale else ""),
            expected=f"0x{want:02x}", actual=f"0x{got:02x}", packet_hex=_hex(raw),
            example_hex=_hex(replace(p, frame=replace(p.frame, checksum=want)).encode()),
            offsets=at, request=key,
        )  # fmt: skip
    known = ref.has_defect(str(p.defect))
    return finding(
        "known_defect" if known else "invalid_encoding", flow.id, i, ts,
        f"{key} decodes only with a defect: {p.defect}"
        + (" (the reference has this defect too)" if known else ""),
        expected="a well-formed packet", actual=str(p.defect), packet_hex=_hex(raw),
        example_hex=example, request=key,
    )  # fmt: skip


def capture_findings(result: CaptureResult, ref: Reference) -> list[ConformanceFinding]:
    """Reader findings that are not packet defects: TLS, gaps, bytes that are not Cync."""
    out: list[ConformanceFinding] = []
    for f in result.findings:
        if f.reason.startswith("defect:"):
            continue
        out.append(_capture_finding(f, ref))
    return out


def _capture_finding(f: Finding, ref: Reference) -> ConformanceFinding:
    text = f"{f.reason} in {f.sender or 'capture'} bytes {f.offset}..{f.offset + f.length - 1}"
    if f.detail:
        text += f": {f.detail[:64]}"
    if f.reason in _NOTES:
        return finding("capture_note", f.flow, None, f.ts, text, actual=f.reason)
    if ref.has_finding(f.reason):
        return finding("known_defect", f.flow, None, f.ts, text + " (the reference has it too)",
                       actual=f.reason)  # fmt: skip
    return finding("invalid_encoding", f.flow, None, f.ts, text, actual=f.reason,
                   packet_hex=f.detail[:96])  # fmt: skip
