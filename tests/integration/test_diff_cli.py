# `cyncsim diff` end to end: real captures conform to their own model, and candidates made
# from a real capture with exactly one defect each exit 1 with a finding of the right kind
# pointing at the mutated packet (flow + index); usage and input errors exit 2.
#
# Candidates are written as MITM text logs (one record per packet, one [conn:N] per flow of
# the decoded capture, so flow N of the capture is "<file>#conn:N+1/1" of the candidate with
# the same packet indices) or as pcapng through replay/capture/pcapwrite.py.
from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from cyncsim.replay.capture import CaptureResult, read_capture
from cyncsim.replay.capture.pcapwrite import Side, TcpConversation, write_pcapng
from cyncsim.replay.conformance import Reference, pair_flow
from cyncsim.replay.describe import request_key
from cyncsim.replay.model import DeviceModel
from cyncsim.replay.payloads import LightStateCommand, decode_command
from cyncsim.replay.protocol import CyncPacket, FramedPacket
from cyncsim.simulator.cloud import CyncCloudSimulator
from cyncsim.simulator.device import CyncDeviceSimulator
from cyncsim.tools.cli import main
from tests.support import (
    MARKER_BRIGHTNESS,
    REPO_ROOT,
    Packet,
    capture_path,
    decoded_flows,
    frame_seq,
    indices,
    marker,
    request_of,
    status_of,
    write_text_log,
)

LOCAL = "capture_20251107_152132.txt"
BRIDGE = bytes.fromhex("6457e7f2")


# ---------------------------------------------------------------------- helpers
def write_pcapng_log(path: Path, flows: Sequence[Sequence[Packet]]) -> None:
    """Each flow as one loopback TCP connection to port 23779, one segment per packet."""
    frames = []
    for n, pk in enumerate(flows):
        if not pk:
            continue
        items: list[tuple[float, Side, bytes]] = [
            (ts, "client" if s == "device" else "server", raw) for ts, s, raw in pk
        ]
        frames += TcpConversation.exchange(
            ("127.0.0.1", 40000 + n), ("127.0.0.1", 23779), items, mss=65000
        )
    frames.sort(key=lambda f: f.ts)
    write_pcapng(path, frames)


def run_diff(*argv: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = main(["diff", "--no-progress", "--json", *argv], out=out)
    return code, json.loads(out.getvalue())


def errors(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["severity"] == "error"]


def _brightness(packet: CyncPacket) -> int | None:
    """The brightness a 0x73 light-state command sets (None for anything else)."""
    if isinstance(packet, FramedPacket) and packet.frame is not None:
        command = decode_command(packet.frame)
        if isinstance(command, LightStateCommand):
            return command.brightness
    return None


@pytest.fixture(scope="module")
def capture() -> Path:
    return capture_path(LOCAL)


@pytest.fixture(scope="module")
def decoded(capture: Path) -> CaptureResult:
    return read_capture(capture)


@pytest.fixture(scope="module")
def model_file(capture: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "local.msgpack"
    assert main(["import", "--no-progress", str(capture), "-o", str(path)], out=io.StringIO()) == 0
    return path


@pytest.fixture(scope="module")
def bridge(decoded: CaptureResult) -> int:
    """Index of the LED-strip bridge's long-lived connection (the one answered flow)."""
    n = max(range(len(decoded.flows)), key=lambda k: len(decoded.flows[k].packets))
    assert decoded.flows[n].device_id == BRIDGE
    return n


class Mutant:
    """The capture's flows with one defect; ``where`` is (flow number, packet index)."""

    def __init__(self, decoded: CaptureResult, tmp: Path, name: str) -> None:
        self.flows = decoded_flows(decoded)
        self.path = tmp / f"{name}.txt"

    def flow_id(self, n: int) -> str:
        return f"{self.path.name}#conn:{n + 1}/1"

    def write(self) -> Path:
        write_text_log(self.path, self.flows)
        return self.path


def check_points_at(
    report: dict[str, Any], kind: str, flow_id: str, index: int, path: Path, raw: bytes
) -> dict[str, Any]:
    """The finding of ``kind`` at (flow_id, index), and the candidate really has ``raw`` there."""
    found = [f for f in report["findings"] if f["kind"] == kind]
    assert found, f"no {kind} finding: {report['finding_counts']}"
    hit: list[dict[str, Any]] = [f for f in found if f["flow"] == flow_id and f["index"] == index]
    assert hit, f"{kind} points at {[(f['flow'], f['index']) for f in found]}, not {index}"
    cand = next(f for f in read_capture(path).flows if f.id == flow_id)
    assert cand.packets[index].packet.encode() == raw
    assert bytes.fromhex(hit[0]["packet_hex"]) == raw
    return hit[0]


# ---------------------------------------------------------------------- conformant
def test_capture_conforms_to_its_own_model(model_file: Path, capture: Path) -> None:
    code, report = run_diff(str(model_file), str(capture))
    assert code == 0 and report["verdict"] == "conformant"
    assert not errors(report)
    assert set(report["finding_counts"]) == {"stale_checksum_known"}  # the strip's firmware
    judged = [t for t in report["timing"] if t["verdict"] != "insufficient"]
    assert len(judged) >= 8 and all(t["verdict"] == "pass" for t in judged)
    assert {"verdict", "findings", "timing", "coverage"} <= set(report)
    assert all(c["status"] == "exercised" for c in report["coverage"])


def test_capture_conforms_when_the_reference_is_the_capture(capture: Path) -> None:
    code, report = run_diff(str(capture), str(capture))
    assert code == 0 and not errors(report)


def test_rewritten_capture_conforms(
    decoded: CaptureResult, model_file: Path, tmp_path: Path
) -> None:
    """Control for the mutation tests: the writers alone change nothing."""
    text, pcap = tmp_path / "same.txt", tmp_path / "same.pcapng"
    write_text_log(text, decoded_flows(decoded))
    write_pcapng_log(pcap, decoded_flows(decoded))
    for path in (text, pcap):
        code, report = run_diff(str(model_file), str(path))
        assert code == 0, errors(report)[:3]
        assert report["packets"] == decoded.packet_count


# ---------------------------------------------------------------------- mutations
def test_7b_echoing_wrong_bytes(
    decoded: CaptureResult, bridge: int, model_file: Path, tmp_path: Path
) -> None:
    m = Mutant(decoded, tmp_path, "echo")
    i = indices(m.flows[bridge], "0x7b", "device")[9]
    ts, s, raw = m.flows[bridge][i]
    bad = raw[:10] + bytes([raw[10] ^ 0x2A]) + raw[11:]
    m.flows[bridge][i] = (ts, s, bad)
    code, report = run_diff(str(model_file), str(m.write()))
    assert code == 1 and report["verdict"] == "nonconformant"
    assert {f["kind"] for f in errors(report)} == {"echo_mismatch"}
    hit = check_points_at(report, "echo_mismatch", m.flow_id(bridge), i, m.path, bad)
    assert hit["offsets"] == [10]
    assert "msg_id" in hit["expected"] and hit["request"].startswith("0x73:f8:")
    req = m.flows[bridge][hit["request_index"]][2]
    assert req[0] == 0x73 and req[9:12] == raw[9:12]  # the request the 0x7B should copy


def test_device_counter_that_skips(
    decoded: CaptureResult, bridge: int, model_file: Path, tmp_path: Path
) -> None:
    m = Mutant(decoded, tmp_path, "counter")
    results = indices(m.flows[bridge], "0x73:f9:f0", "device")
    start = results[9]
    dev73 = [i for i, (_, s, raw) in enumerate(m.flows[bridge]) if s == "device" and raw[0] == 0x73]
    for i in dev73:
        if i >= start:  # every later 0x73 from the device is one further on
            ts, s, raw = m.flows[bridge][i]
            c = (int.from_bytes(raw[9:11], "big") + 1) & 0xFFFF
            m.flows[bridge][i] = (ts, s, raw[:9] + c.to_bytes(2, "big") + raw[11:])
    code, report = run_diff(str(model_file), str(m.write()))
    assert code == 1
    assert {f["kind"] for f in errors(report)} == {"counter_skip"}
    assert len(errors(report)) == 1  # one skip, not one finding per later packet
    hit = check_points_at(report, "counter_skip", m.flow_id(bridge), start, m.path,
                          m.flows[bridge][start][2])  # fmt: skip
    assert hit["offsets"] and set(hit["offsets"]) <= {9, 10}


def test_wrong_checksum_on_a_73(
    decoded: CaptureResult, bridge: int, model_file: Path, tmp_path: Path
) -> None:
    m = Mutant(decoded, tmp_path, "checksum")
    i = indices(m.flows[bridge], "0x73:f8:f0", "cloud")[4]
    ts, s, raw = m.flows[bridge][i]
    bad = raw[:-2] + bytes([(raw[-2] + 1) & 0xFF]) + raw[-1:]
    m.flows[bridge][i] = (ts, s, bad)
    code, report = run_diff(str(model_file), str(m.write()))
    assert code == 1
    assert {f["kind"] for f in errors(report)} == {"bad_checksum"}
    hit = check_points_at(report, "bad_checksum", m.flow_id(bridge), i, m.path, bad)
    assert hit["offsets"] == [len(raw) - 2]
    assert hit["expected"] == f"0x{raw[-2]:02x}" and hit["actual"] == f"0x{bad[-2]:02x}"


def test_response_type_swapped(
    decoded: CaptureResult, bridge: int, model_file: Path, tmp_path: Path
) -> None:
    m = Mutant(decoded, tmp_path, "swap")
    i = indices(m.flows[bridge], "0x7b", "device")[11]
    ts, s, raw = m.flows[bridge][i]
    bad = b"\x78" + raw[1:]  # the 0x7B ack sent as a 0x78
    m.flows[bridge][i] = (ts, s, bad)
    code, report = run_diff(str(model_file), str(m.write()))
    assert code == 1
    assert {f["kind"] for f in errors(report)} == {"wrong_response"}
    hit = check_points_at(report, "wrong_response", m.flow_id(bridge), i, m.path, bad)
    assert hit["expected"] == "0x7b" and hit["actual"] == "0x78" and hit["offsets"] == [0]


def test_responses_out_of_order(
    decoded: CaptureResult, bridge: int, model_file: Path, tmp_path: Path
) -> None:
    m = Mutant(decoded, tmp_path, "order")
    ref = Reference.from_model(DeviceModel.load(model_file), [])
    samples, _ = pair_flow(decoded.flows[bridge], ref, "local")
    by_req: dict[int, dict[str, int]] = {}
    for smp in samples:
        by_req.setdefault(smp.request_index, {})[smp.response] = smp.response_index
    flow = m.flows[bridge]
    dev73 = {i for i, (_, s, raw) in enumerate(flow) if s == "device" and raw[0] == 0x73}
    # a command whose f9 result comes after its own 0x7B with no other device 0x73 between
    req, ack, res = next(
        (r, d["0x7b"], d[k])
        for r, d in sorted(by_req.items())
        for k in d
        if k.startswith("0x73:f9:") and "0x7b" in d and d["0x7b"] < d[k]
        and not dev73 & set(range(d["0x7b"], d[k]))
    )  # fmt: skip
    moved = flow.pop(res)
    flow.insert(ack, (flow[ack][0], moved[1], moved[2]))  # the result now before its ack
    code, report = run_diff(str(model_file), str(m.write()))
    assert code == 1
    assert {f["kind"] for f in errors(report)} == {"response_order"}
    hit = check_points_at(report, "response_order", m.flow_id(bridge), ack, m.path, moved[2])
    assert hit["request_index"] == req and "0x7b" in hit["expected"]


def test_every_latency_times_5(
    decoded: CaptureResult, bridge: int, model_file: Path, tmp_path: Path
) -> None:
    m = Mutant(decoded, tmp_path, "slow")
    t0 = min(ts for flow in m.flows for ts, _, _ in flow)
    m.flows = [[(t0 + 5 * (ts - t0), s, raw) for ts, s, raw in flow] for flow in m.flows]
    code, report = run_diff(str(model_file), str(m.write()))
    assert code == 1
    lat = [f for f in report["findings"] if f["kind"] == "latency"]
    ping = next(f for f in lat if f["request"] == "0xd3")
    assert ping["flow"] == m.flow_id(bridge)
    cand = next(f for f in read_capture(m.path).flows if f.id == ping["flow"])
    resp, req = cand.packets[ping["index"]], cand.packets[ping["request_index"]]
    assert resp.packet.type == 0xD8 and req.packet.type == 0xD3
    orig = decoded.flows[bridge].packets
    before = orig[ping["index"]].ts - orig[ping["request_index"]].ts
    assert resp.ts - req.ts == pytest.approx(5 * before, abs=2e-5)
    row = next(t for t in report["timing"] if t["request"] == "0xd3")
    assert row["verdict"] == "fail" and row["distance"] > 0.75
    assert row["candidate_ms"]["p50"] == pytest.approx(5 * row["reference_ms"]["p50"], rel=0.01)


def test_heartbeats_every_60_s(
    decoded: CaptureResult, bridge: int, model_file: Path, tmp_path: Path
) -> None:
    m = Mutant(decoded, tmp_path, "heartbeat")
    flow = m.flows[bridge]
    shift, shifted = 0.0, []
    out = []
    for i, (ts, s, raw) in enumerate(flow):
        if s == "device" and raw[0] == 0xD3 and i and ts - flow[i - 1][0] > 15.0:
            shift += 60.0 - (ts - flow[i - 1][0])  # this ping now after 60 s of silence
            shifted.append(i)
        out.append((ts + shift, s, raw))
    m.flows[bridge] = out
    assert len(shifted) >= 25
    code, report = run_diff(str(model_file), str(m.write()))
    assert code == 1
    assert {f["kind"] for f in errors(report)} == {"heartbeat"}
    hit = next(f for f in report["findings"] if f["kind"] == "heartbeat")
    assert hit["flow"] == m.flow_id(bridge) and hit["index"] in shifted
    row = next(t for t in report["timing"] if t["request"] == "heartbeat")
    assert row["verdict"] == "fail" and 59.0 <= row["candidate_s"]["p50"] <= 61.0


def test_pcapng_candidate_with_a_defect(
    decoded: CaptureResult, bridge: int, model_file: Path, tmp_path: Path
) -> None:
    flows = decoded_flows(decoded)
    i = indices(flows[bridge], "0x7b", "device")[3]
    ts, s, raw = flows[bridge][i]
    flows[bridge][i] = (ts, s, raw[:9] + b"\x00\x99\x00")
    path = tmp_path / "echo.pcapng"
    write_pcapng_log(path, flows)
    code, report = run_diff(str(model_file), str(path))
    assert code == 1 and {f["kind"] for f in errors(report)} == {"echo_mismatch"}
    hit = next(f for f in report["findings"] if f["kind"] == "echo_mismatch")
    cand = next(f for f in read_capture(path).flows if f.id == hit["flow"])
    assert cand.packets[hit["index"]].packet.encode() == flows[bridge][i][2]
    assert cand.device_id == BRIDGE


# ---------------------------------------------------------------------- output and errors
def test_human_output_highlights_differing_bytes(
    decoded: CaptureResult, bridge: int, model_file: Path, tmp_path: Path
) -> None:
    m = Mutant(decoded, tmp_path, "human")
    i = indices(m.flows[bridge], "0x7b", "device")[2]
    ts, s, raw = m.flows[bridge][i]
    m.flows[bridge][i] = (ts, s, raw[:11] + b"\x07")
    out = io.StringIO()
    code = main(["diff", "--no-progress", str(model_file), str(m.write())], out=out)
    text = out.getvalue()
    assert code == 1
    assert "verdict: NONCONFORMANT" in text
    assert "echo_mismatch (1, error)" in text
    assert f"{m.flow_id(bridge)} packet {i}" in text
    assert "64 57 e7 f2 00 00 [07]" in text  # the candidate's byte 11, marked
    assert "64 57 e7 f2 00 00 [00]" in text  # what the reference's rule expects there
    assert "0xd3 -> 0xd8" in text and "heartbeat idle" in text


def test_exit_status_of_the_console_command(
    model_file: Path, capture: Path, tmp_path: Path
) -> None:
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cyncsim.tools.cli", "diff", "--no-progress", *argv],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    ok = run(str(model_file), str(capture), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["verdict"] == "conformant"
    missing = run(str(model_file), str(tmp_path / "nope.txt"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"cyncsim diff: error: {tmp_path / 'nope.txt'}: no such file"
    usage = run(str(model_file))  # no candidate
    assert usage.returncode == 2 and "usage:" in usage.stderr
    bad_tol = run(str(model_file), str(capture), "--tolerance", "ks=2")
    assert bad_tol.returncode == 2 and "bad tolerance" in bad_tol.stderr


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"\x00\x01junk"), "unknown format"),
        (lambda p: p.write_text(""), "file is empty"),
    ],
)
def test_bad_candidate_is_one_line(
    model_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], object],
    message: str,
) -> None:
    bad = tmp_path / "bad.bin"
    make(bad)
    code = main(["diff", "--no-progress", str(model_file), str(bad)], out=io.StringIO())
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_model_and_captures_mixed_as_reference(
    model_file: Path, capture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["diff", "--no-progress", str(model_file), "--reference-also", str(capture),
                 str(capture)], out=io.StringIO())  # fmt: skip
    assert code == 2 and "either one model file or captures" in capsys.readouterr().err


def test_html_into_missing_directory(
    model_file: Path, capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no" / "such" / "report.html"
    code = main(["diff", "--no-progress", str(model_file), str(capture), "--html", str(target)],
                out=io.StringIO())  # fmt: skip
    assert code == 2 and "no such directory" in capsys.readouterr().err


# ---------------------------------------------------------------------- the simulator
async def test_simulator_recording_conforms(
    decoded: CaptureResult, bridge: int, model_file: Path, tmp_path: Path
) -> None:
    """A recording of the device simulator run from the model conforms to the model."""
    model = DeviceModel.load(model_file)
    flow = decoded.flows[bridge].packets
    commands = [fp for fp in flow if fp.sender == "cloud"
                and request_key(fp.packet) in ("0x73:f8:d0", "0x73:f8:f0")][:40]  # fmt: skip
    # The marker sent after them must be told apart: a sequence and a brightness of its own.
    seqs = {frame_seq(fp.packet.encode()) for fp in commands}
    n_mark = next(n for n in range(1, 32) if frame_seq(marker(n, dev=BRIDGE)) not in seqs)
    assert MARKER_BRIGHTNESS not in {_brightness(fp.packet) for fp in commands}
    record = tmp_path / "simulator.txt"
    async with CyncCloudSimulator(model, seed=11) as cloud:
        sim = CyncDeviceSimulator(BRIDGE, model=model, seed=12, record=record)
        try:
            await sim.connect("127.0.0.1", cloud.port)
            await sim.wait_handshaken()
            prev = commands[0].ts
            for fp in commands:  # the capture's commands, with its gaps capped at 0.25 s
                await asyncio.sleep(min(fp.ts - prev, 0.25))
                prev = fp.ts
                cloud.send_raw(fp.packet.encode(), BRIDGE)
            await cloud.wait_for(lambda: len(cloud.received(0x7B)) >= len(commands), timeout=60)
            # A marker for the bridge's own node: the device sends its results and its status
            # reports each in order, so once the marker's are back, all the others are too.
            node = sim.engine.mesh_node
            mark = marker(n_mark, node=node, dev=BRIDGE)
            cloud.send_raw(mark, BRIDGE)

            def marker_answered() -> bool:
                results = {frame_seq(p.encode()) for p in cloud.received(0x73)}
                reports = [status_of(p.encode()) for p in cloud.received(0x83)
                           if request_of(p.encode()) == "0x83:fa:db"]  # fmt: skip
                return frame_seq(mark) in results and any(
                    st[0] == node and st[2] == MARKER_BRIGHTNESS for st in reports
                )

            await cloud.wait_for(marker_answered, timeout=60)
        finally:
            await sim.stop()
    code, report = run_diff(str(model_file), str(record))
    assert code == 0, errors(report)[:5]
    judged = [t for t in report["timing"] if t["verdict"] != "insufficient"]
    assert any(t["request"] == "0x73:f8:f0" for t in judged)
