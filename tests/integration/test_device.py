# A listening simulated device over real loopback sockets, driven with the real captured
# commands of PROTOCOL.md section 12 and checked byte for byte against the rules of section 8;
# state changes, duplicates, groups, a queued burst, odd packets, --record, and clean stops.
#
# RawController (tests.support) is a bare controller that records every packet with its
# arrival time; ReliableTransport is used where a full controller is handier.  Waits are
# bounded; that nothing else came is shown by a marker command's answers (devices answer in
# order), never by sleeping; no assertion is about wall-clock speed.
from __future__ import annotations

import asyncio
import io
import statistics
from pathlib import Path

import pytest

from cyncsim.replay.capture import read_capture
from cyncsim.replay.payloads import LightStateCommand, build_command, decode_status_report
from cyncsim.replay.protocol import exchange_key
from cyncsim.simulator.device import CyncDeviceSimulator, DeviceState
from cyncsim.simulator.ports import find_free_port
from cyncsim.simulator.transport import ReliableTransport
from tests.support import (
    ACK_7B,
    AUTH,
    CT_58,
    DEV,
    GROUP_BRI,
    GROUP_OFF,
    HELLO_ACK,
    POWER_OFF,
    POWER_ON,
    RESULT_BRI,
    RESULT_CT,
    RESULT_OFF,
    RESULT_ON,
    RawController,
    answered,
    assert_no_other_tasks,
    eventually,
    marker,
    request_of,
    socket_fds,
    status_of,
)

H = bytes.fromhex


def make_device(**kw: object) -> CyncDeviceSimulator:
    args: dict[str, object] = {"mesh_node": 206, "seed": 21, "time_scale": 0.02, "groups": (16,)}
    args.update(kw)
    return CyncDeviceSimulator(DEV, **args)  # type: ignore[arg-type]


async def handshaken(sim: CyncDeviceSimulator) -> RawController:
    ctl = RawController()
    await ctl.connect(sim.port)
    (hello,) = await ctl.wait_count("0x23", 1)
    assert hello[6:10] == DEV and hello[12:28] == AUTH and len(hello) == 31
    await ctl.send(HELLO_ACK)
    await sim.wait_handshaken()
    return ctl


# ---------------------------------------------------------------------- section 12 commands
async def test_real_commands_answered_byte_for_byte() -> None:
    async with make_device(state=DeviceState(on=True, brightness=30, color_temp=10)) as sim:
        ctl = await handshaken(sim)
        assert ctl.packets[0][1][:1] == b"\x23"  # the device speaks first
        sim.engine.counters["device:0x73"] = 5
        await ctl.send(POWER_OFF)
        assert (await ctl.wait_count("0x73:f9:d0", 1)) == [RESULT_OFF]
        (report,) = await ctl.wait_count("0x83:fa:db", 1)
        assert status_of(report) == (206, False, 30, 10)
        assert sim.state.on is False
        await ctl.send(POWER_ON)
        assert (await ctl.wait_count("0x73:f9:d0", 2))[1] == RESULT_ON  # own counter +1
        reports = await ctl.wait_count("0x83:fa:db", 2)
        assert status_of(reports[1]) == (206, True, 30, 10)
        first, second = (int.from_bytes(r[9:11], "big") for r in reports)
        assert second == first + 1 and reports[1][11] == 0
        sim.engine.counters["device:0x73"] = 2
        await ctl.send(GROUP_BRI)  # group 0x8010: the device is in group 16
        assert (await ctl.wait_count("0x73:f9:f0", 1)) == [RESULT_BRI]
        sim.engine.counters["device:0x73"] = 7
        await ctl.send(CT_58)
        assert (await ctl.wait_count("0x73:f9:f0", 2))[1] == RESULT_CT
        await ctl.wait_count("0x83:fa:db", 4)
        assert status_of(ctl.of("0x83:fa:db")[-1]) == (206, True, 100, 58)
        assert ctl.of("0x7b") == [ACK_7B] * 4  # 7B echoes bytes 5-11 of each command
        order = [request_of(p) for _, p in ctl.packets if request_of(p) in ("0x7b", "0x73:f9:d0")][
            :2
        ]
        assert order == ["0x7b", "0x73:f9:d0"]  # the ack comes before the result
        assert sim.state.toggle_count == 4
        await ctl.close()


async def test_duplicate_acked_twice_applied_once() -> None:
    async with make_device() as sim:
        ctl = await handshaken(sim)
        await ctl.send(POWER_ON, POWER_ON)
        await ctl.wait_count("0x7b", 2)
        await ctl.wait_count("0x83:fa:db", 1)
        await answered(ctl, marker(1))  # a second result or report would have come before
        assert len(ctl.of("0x73:f9:d0")) == 1 and len(ctl.of("0x83:fa:db")) == 2  # + marker's
        assert sim.state.toggle_count == 2 and sim.stats["duplicates"] == 1  # 1 + the marker
        await ctl.close()


async def test_group_command_reaches_members_only() -> None:
    member = make_device(groups=(10,), state=DeviceState(on=True))
    other_id = H("6457e7f3")
    outsider = CyncDeviceSimulator(other_id, mesh_node=207, groups=(3,), seed=2, time_scale=0.02,
                                   state=DeviceState(on=True))  # fmt: skip
    async with member, outsider:
        a, b = await handshaken(member), RawController()
        await b.connect(outsider.port)
        await b.wait_count("0x23", 1)
        await b.send(HELLO_ACK)
        await a.send(GROUP_OFF)
        await b.send(GROUP_OFF[:5] + other_id + GROUP_OFF[9:])
        await a.wait_count("0x83:fa:db", 1)
        await b.wait_count("0x73:f9:d0", 1)
        assert member.state.on is False and outsider.state.on is True
        assert b.of("0x7b") == [H("7b 00 00 00 07") + other_id + b"\0\0\0"]
        await answered(b, marker(2, node=207, dev=other_id), node=207)
        (report,) = b.of("0x83:fa:db")  # nothing changed on the outsider: no status but
        assert status_of(report)[:3] == (207, True, 77)  # the marker's
        await a.close()
        await b.close()


async def test_burst_of_20_commands_queues_up() -> None:
    async with make_device(time_scale=1.0) as sim:
        ctl = await handshaken(sim)
        burst = [build_command(DEV, bytes((0, i + 1, 0)), LightStateCommand(i + 1, 206, i)).encode()
                 for i in range(20)]  # fmt: skip
        sent_at = await ctl.send(*burst)
        await eventually(lambda: len([p for _, p in ctl.packets if p[:1] == b"\x7b"]) >= 20, 10)
        acks = [(t, p) for t, p in ctl.packets if p[:1] == b"\x7b"]
        assert [exchange_key(p) for _, p in acks] == [exchange_key(c) for c in burst]  # in order
        delays = [t - sent_at for t, _ in acks]
        assert statistics.median(delays[-5:]) > 2 * statistics.median(delays[:5])
        await ctl.close()


async def test_unknown_opcode_and_foreign_id_still_acked() -> None:
    async with make_device() as sim:
        ctl = await handshaken(sim)
        effect = H("73 00 00 00 1a 64 57 e7 f2 00 11 00 7e 22 00 00 00 f8 e2 08 00"
                   " e2 11 02 07 01 01 02 00")  # fmt: skip
        effect += bytes((sum(effect[18:]) & 0xFF, 0x7E))  # a valid frame, opcode e2 unknown
        foreign = POWER_OFF[:5] + H("45880f3a") + b"\x00\x10\x00" + POWER_OFF[12:]
        await ctl.send(effect, foreign)
        acks = await ctl.wait_count("0x7b", 2)
        assert acks == [ACK_7B[:9] + b"\x00\x11\x00", H("7b 00 00 00 07 45 88 0f 3a 00 10 00")]
        await answered(ctl, marker(3))
        keys = [request_of(p) for _, p in ctl.packets]
        assert [k for k in keys if k.startswith("0x73")] == ["0x73:f9:f0"]  # the marker's only
        assert sim.state.toggle_count == 1  # the marker
        assert sim.stats["unknown"] == 1 and sim.stats["foreign"] == 1
        await ctl.close()


async def test_reliable_transport_drives_the_device() -> None:
    async with make_device(firmware_version="11158") as sim:
        t = ReliableTransport(port=sim.port, seed=3, ack_timeout_seconds=2.0)
        await t.connect()
        hello = await t.handshake()
        assert hello.device_id == DEV and hello.auth_code == AUTH
        r = await t.send_toggle_command(206, False, wait_result=True)
        assert r.success and r.result is not None
        r = await t.send_light_state(206, rgb=(1, 2, 3), wait_result=True)
        assert r.success
        await sim.wait_for(lambda: sim.state.rgb == (1, 2, 3))
        assert sim.state.color_temp == 0xFE and sim.state.on is False
        assert sim.set_state(on=True, brightness=5)
        for _ in range(10):  # firmware reports, then statuses, in some order
            pkt = await t.recv_reliable(timeout=5)
            st = decode_status_report(pkt)
            if st is not None and st.on and st.brightness == 5:
                break
        else:
            pytest.fail("the set_state report never arrived")
        assert sim.send_status_broadcast()
        await t.close()


# ---------------------------------------------------------------------- lifecycle
async def test_stop_leaves_nothing_and_restart_rebinds(monkeypatch: pytest.MonkeyPatch) -> None:
    before_fds = socket_fds()
    port = find_free_port()
    monkeypatch.setenv("CYNC_SIM_PORT", str(port))
    sim = make_device()
    await sim.start()
    assert sim.port == port  # the env var overrides the default port 0
    ctl = await handshaken(sim)
    await ctl.send(POWER_ON)
    await ctl.wait_count("0x7b", 1)
    await sim.stop()
    await sim.stop()  # safe twice
    await asyncio.wait_for(ctl.eof.wait(), 5)
    await ctl.close()
    await assert_no_other_tasks()
    assert socket_fds() == before_fds
    await sim.start()  # start after stop: same port, same state and counters
    assert sim.port == port
    ctl = await handshaken(sim)
    sim_counter = sim.engine.counters["device:0x73"]
    await ctl.send(POWER_OFF)
    (res,) = await ctl.wait_count("0x73:f9:d0", 1)
    assert int.from_bytes(res[9:11], "big") == sim_counter
    await ctl.close()
    await sim.stop()
    await assert_no_other_tasks()
    assert socket_fds() == before_fds


async def test_second_controller_replaces_the_first() -> None:
    async with make_device() as sim:
        first = await handshaken(sim)
        second = await handshaken(sim)
        await asyncio.wait_for(first.eof.wait(), 5)
        assert sim.connections == 2 and sim.connected
        await second.send(POWER_OFF)
        await second.wait_count("0x7b", 1)
        await first.close()
        await second.close()


@pytest.mark.parametrize("suffix", [".pcapng", ".txt"])
async def test_record_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"session{suffix}"
    async with make_device(record=path) as sim:
        ctl = await handshaken(sim)
        await ctl.send(POWER_OFF)
        await ctl.wait_count("0x83:fa:db", 1)
        await ctl.send(POWER_ON)
        await ctl.wait_count("0x83:fa:db", 2)
        await ctl.wait_count("0xd3", 1)  # a heartbeat too (scaled: after ~0.4 s idle)
        await ctl.send(H("d8 00 00 00 00"))
        await ctl.close()
        await sim.wait_for(lambda: not sim.connected)
    result = read_capture(path)
    flows = [f for f in result.flows if f.packets]
    assert len(flows) == 1 and flows[0].exact and flows[0].device_id == DEV
    got_dev = [fp.packet.encode() for fp in flows[0].packets if fp.sender == "device"]
    got_cloud = [fp.packet.encode() for fp in flows[0].packets if fp.sender == "cloud"]
    assert got_dev == [p for _, p in ctl.packets]
    assert got_cloud == ctl.sent
    assert not [f for f in result.findings if f.reason != "tls"]
    from cyncsim.tools.cli import main  # `cyncsim inspect` and `cyncsim import` read it back

    listing = io.StringIO()
    assert main(["inspect", "--no-progress", str(path)], out=listing) == 0
    lines = listing.getvalue().splitlines()
    assert sum(" device 0x23 hello " in ln for ln in lines) == 1
    assert sum(" cloud  0x73 data " in ln for ln in lines) == len(ctl.sent) - 2  # 28, d8
    assert sum(" device 0x7b data_ack " in ln for ln in lines) == len(ctl.of("0x7b"))
    assert main(["import", "--no-progress", str(path), "-o", str(tmp_path / "m.msgpack")],
                out=io.StringIO()) == 0  # fmt: skip
    if suffix == ".pcapng":  # real addresses and ports: the controller dialled the device
        dev_addr, cloud_addr = flows[0].endpoints or ("", "")
        assert dev_addr.endswith(f":{sim.port}") and cloud_addr.startswith("127.0.0.1:")
