# The controller's sans-IO core (cyncsim.replay.controller) without sockets or an event loop.
#
# Strategy: packets are built with the project's builders and fed to ``Controller.receive``
# with an explicit time; assertions check the verdict, the auto-answer bytes and the exchange
# tables.  Connection states are driven through ``ConnectionState.move_to``, including moves
# the transition table forbids.
from __future__ import annotations

import datetime
import time
from collections.abc import Iterator

import pytest

from cyncsim.replay.controller import (
    AUTO_ANSWERS,
    HELLO_ACK,
    TRANSITIONS,
    ConnectionState,
    ConnState,
    Controller,
    Exchange,
    IllegalTransition,
    Verdict,
    auto_answer,
    control_answer_problem,
    decode_error,
    hello_problem,
)
from cyncsim.replay.errors import CyncError
from cyncsim.replay.payloads import (
    PowerCommand,
    StatusReport,
    build_command,
    build_control,
    build_control_answer,
    build_data_ack,
    build_hello,
    build_report,
    build_result,
    build_simple,
    build_status,
    decode_time_reply,
)
from cyncsim.replay.protocol import (
    CyncPacket,
    FramedPacket,
    PacketType,
    decode_packet,
    exchange_key,
)

DEV = bytes.fromhex("6457e7f2")
AUTH = b"1e07d4c9dd546401"
NOW = datetime.datetime(2025, 11, 6, 8, 20, 40, tzinfo=datetime.UTC).timestamp()


def command(msg: int, seq: int, node: int = 1) -> FramedPacket:
    return build_command(DEV, bytes((0, msg, 0)), PowerCommand(seq, node, True))


def report(msg: int) -> FramedPacket:
    return build_report(DEV, bytes((0, msg, 0)), StatusReport(5, True, 100, 50, (0, 0, 0)))


def open_for(core: Controller[str], cmd: FramedPacket, *, wait_result: bool) -> Exchange[str]:
    assert cmd.frame is not None
    seq = cmd.frame.seq_byte if wait_result else None
    exchange = core.open(exchange_key(cmd.encode()), seq, cmd.frame.opcode, "waiter")
    assert isinstance(exchange, Exchange)
    return exchange


# ------------------------------------------------------------------------ connection states
def test_states_move_along_the_table() -> None:
    conn = ConnectionState()
    assert conn.state is ConnState.IDLE and conn.mode is None
    path = [ConnState.CONNECTING, ConnState.CONNECTED, ConnState.RECONNECTING,
            ConnState.CONNECTED, ConnState.DISCONNECTED, ConnState.CONNECTING,
            ConnState.CONNECTED, ConnState.CLOSED]  # fmt: skip
    for state in path:
        assert conn.move_to(state) is True
        assert conn.state is state
    assert conn.move_to(ConnState.CLOSED) is False  # staying is no transition


def test_illegal_transition_raises_a_cync_error() -> None:
    conn = ConnectionState()
    with pytest.raises(IllegalTransition) as err:
        conn.move_to(ConnState.CONNECTED)  # idle -> connected skips connecting / listening
    assert isinstance(err.value, CyncError) and err.value.reason == "illegal_transition"
    assert (err.value.old, err.value.new) == (ConnState.IDLE, ConnState.CONNECTED)
    assert "idle cannot become connected" in str(err.value)
    assert conn.state is ConnState.IDLE  # unchanged
    conn.move_to(ConnState.CLOSED)
    for state in ConnState:
        assert conn.can_move_to(state) is (state is ConnState.CLOSED)
    with pytest.raises(IllegalTransition):
        conn.move_to(ConnState.LISTENING)  # nothing leaves closed


def test_transition_table_is_complete() -> None:
    assert set(TRANSITIONS) == set(ConnState)
    for state, targets in TRANSITIONS.items():
        assert state not in targets
        assert ConnState.IDLE not in targets  # nothing goes back to "never connected"
        assert state is ConnState.CLOSED or ConnState.CLOSED in targets  # close from anywhere


def test_what_states_mean_for_callers() -> None:
    assert [s.refusal for s in ConnState] == [
        "not_connected", "not_connected", "not_connected", None, "reconnecting",
        "not_connected", "not_connected",
    ]  # fmt: skip
    ends = {s: s.read_end for s in ConnState if s.read_end is not None}
    assert ends == {
        ConnState.IDLE: "not_connected",
        ConnState.DISCONNECTED: "not_connected",
        ConnState.CLOSED: "closed",
    }
    assert f"{ConnState.RECONNECTING}" == "reconnecting"


# ----------------------------------------------------------------------------- auto-answers
@pytest.fixture
def utc_minus_6(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "CST+6")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_auto_answer_table(utc_minus_6: None) -> None:
    def answer(packet: CyncPacket) -> bytes | None:
        return auto_answer(packet, NOW)

    assert set(AUTO_ANSWERS) == {0x23, 0x43, 0x83, 0xD3, 0xC3}
    assert answer(build_hello(DEV, AUTH)) == HELLO_ACK == bytes.fromhex("28 00 00 00 02 00 00")
    assert answer(build_simple(PacketType.PING)) == bytes.fromhex("d8 00 00 00 00")
    assert answer(build_status(DEV, [])) == bytes.fromhex("48 00 00 00 03 01 01 00")
    assert answer(report(0x42)) == bytes.fromhex("88 00 00 00 03 00 42 00")  # echoes 9-11
    time_reply = answer(build_simple(PacketType.TIME_REQUEST))
    # PROTOCOL.md 4.3: the real cloud's 0xC8 at this instant, in the devices' zone (UTC-6).
    assert time_reply == bytes.fromhex("c8 00 00 00 0b 0d 07 e9 0b 06 05 02 14 28 fd a8")
    reply = decode_time_reply(decode_packet(time_reply))
    assert reply is not None and (reply.weekday, reply.utc_offset_hhmm) == (5, -600)
    assert answer(command(1, 1)) is None  # a 0x73 is not answered by itself


def test_receive_answers_and_classifies(utc_minus_6: None) -> None:
    core: Controller[str] = Controller(dedup_window=2)
    cases = [
        (build_simple(PacketType.PING), Verdict.PING, "d8"),
        (build_status(DEV, []), Verdict.STATUS, "48"),
        (build_simple(PacketType.TIME_REQUEST), Verdict.TIME_REQUEST, "c8"),
        (build_control_answer(build_control(DEV, b"\x01\x02")), Verdict.CONTROL_ANSWER, None),
        (decode_packet(bytes.fromhex("78 00 00 00 07 64 57 e7 f2 00 01 05")), Verdict.OTHER, None),
    ]
    for packet, verdict, first_byte in cases:
        reaction = core.receive(packet, NOW)
        assert reaction.verdict is verdict, packet
        got = None if reaction.reply is None else reaction.reply[:1].hex()
        assert got == first_byte
    # 0x83: answered every time, delivered once while in the de-duplication window.
    verdicts = [core.receive(report(n), NOW) for n in (1, 1, 2, 3, 1)]
    names = [r.verdict.value for r in verdicts]
    assert names == ["report", "duplicate_report", "report", "report", "report"]
    assert all(r.reply is not None and r.reply[0] == 0x88 for r in verdicts)
    assert core.sizes()["dedup"] == 2  # bounded: report 1 had left the window


def test_defective_packets() -> None:
    core: Controller[str] = Controller()
    bad = bytearray(report(9).encode())
    bad[-2] ^= 0xFF  # the inner checksum byte
    packet = decode_packet(bytes(bad), strict=False)
    first, again = core.receive(packet, NOW), core.receive(packet, NOW)
    assert first.verdict is Verdict.DEFECT and first.problem == "invalid_checksum"
    assert first.reply == bytes.fromhex("88 00 00 00 03 00 09 00")  # still acked
    assert (first.repeated_report, again.repeated_report) == (False, True)
    err = decode_error(packet, 40, "peer", "why")
    assert (err.reason, err.offset, err.data) == ("invalid_checksum", 40, bytes(bad))
    # A 0x23 is judged by the handshake: the verdict carries the problem.
    hello = core.receive(build_hello(DEV, b"zzzzzzzzzzzzzzzz"), NOW)
    assert hello.verdict is Verdict.HELLO and hello.reply is None
    assert hello.problem is not None and "16 hex characters" in hello.problem
    assert hello_problem(build_hello(DEV, AUTH)) is None
    request = build_control(DEV, b"\x01\x02")
    assert control_answer_problem(request, build_control_answer(request)) is None
    assert control_answer_problem(request, build_status(DEV, [])) is not None


# -------------------------------------------------------------------------------- exchanges
def test_ack_and_result_matching() -> None:
    core: Controller[str] = Controller()
    first, second = command(1, 10, node=1), command(2, 11, node=2)
    ex1 = open_for(core, first, wait_result=True)
    ex2 = open_for(core, second, wait_result=False)
    assert ex1.waiter == "waiter" and (ex1.ack, ex1.result) == (None, None)
    # Acks out of order: each settles the exchange whose bytes 5-11 it echoes.
    r2 = core.receive(build_data_ack(second), NOW)
    assert (r2.verdict, r2.exchange) == (Verdict.ACKED, ex2) and ex1.ack is None
    r1 = core.receive(build_data_ack(first), NOW)
    assert (r1.verdict, r1.exchange, r1.reply) == (Verdict.ACKED, ex1, None)
    assert isinstance(ex1.ack, CyncPacket) and exchange_key(ex1.ack.encode()) == ex1.key
    assert core.receive(build_data_ack(first), NOW).verdict is Verdict.DUPLICATE_ACK
    assert core.receive(build_data_ack(command(3, 12)), NOW).verdict is Verdict.UNMATCHED_ACK
    # The f9 result: by sequence byte and opcode; only an awaited one settles.
    assert first.frame is not None and second.frame is not None
    wrong_op = build_result(DEV, b"\x00\x07\x00", first.frame)
    assert wrong_op.frame is not None
    wrong_op.frame.opcode = 0xF0
    assert core.receive(wrong_op, NOW).verdict is Verdict.OTHER
    assert core.receive(build_result(DEV, b"\x00\x08\x00", second.frame), NOW).verdict is (
        Verdict.OTHER  # nobody waits for seq 11's result: delivered
    )
    result = core.receive(build_result(DEV, b"\x00\x09\x00", first.frame), NOW)
    assert (result.verdict, result.exchange) == (Verdict.RESULT, ex1)
    assert isinstance(ex1.result, FramedPacket)
    # Finished exchanges are forgotten: a late ack is unmatched.
    core.finish(ex1)
    core.finish(ex2)
    assert core.sizes() == {"pending": 0, "result_waiters": 0, "dedup": 0}
    assert core.receive(build_data_ack(first), NOW).verdict is Verdict.UNMATCHED_ACK


def test_open_refusals_and_failing_open_exchanges() -> None:
    core: Controller[str] = Controller(max_pending=2)
    ex = open_for(core, command(1, 10), wait_result=True)
    assert core.open(ex.key, None, 0xD0, "again") == "id_in_use"  # same message id
    assert core.open(b"other-k", 10, 0xD0, "again") == "id_in_use"  # same awaited sequence
    open_for(core, command(2, 11), wait_result=False)
    assert core.open(b"third-k", None, 0xD0, "more") == "backpressure"
    core.receive(build_data_ack(command(2, 11)), NOW)
    changed = core.fail_open("connection_lost")
    assert changed == [ex]  # the other one was acked and awaits no result
    assert (ex.ack, ex.result) == ("connection_lost", "connection_lost")
    assert core.fail_open("closed") == []


def test_counters_skip_what_is_in_use() -> None:
    core: Controller[str] = Controller(max_pending=300)
    msg = core.next_msg_id(DEV)
    assert msg == b"\x00\x01\x00"
    core.open(DEV + b"\x00\x02\x00", None, 0xD0, "w")
    assert core.next_msg_id(DEV) == b"\x00\x03\x00"  # 2 is open
    for n in range(256):
        assert core.open(bytes((n, 0, 0, 0, 0, 0, 0)), n, 0xD0, "w") != "id_in_use"
    assert core.next_seq() is None  # every sequence byte is awaited
