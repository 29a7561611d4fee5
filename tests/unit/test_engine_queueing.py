# Queueing of device answers: acks and results queue FIFO (a burst gets later and later),
# status reports follow their command by the learned latency and never pile up.
from __future__ import annotations

from cyncsim.captures import load_default_model
from cyncsim.replay.engine import DeviceEngine, Send
from cyncsim.replay.payloads import LightStateCommand, build_command


def _burst(n: int) -> list[Send]:
    model = load_default_model()
    eng = DeviceEngine(
        model, b"\x01\x02\x03\x04", b"1e07d0000000abcd", mesh_node=9, seed=3, time_scale=1.0
    )
    eng.connection_made(0.0)
    out: list[Send] = []
    for i in range(n):
        cmd = build_command(
            b"\x01\x02\x03\x04", bytes((0, i + 1, 0)), LightStateCommand(i + 1, 9, i)
        )
        out += [a for a in eng.receive(cmd.encode(), 0.0) if isinstance(a, Send)]
    return out


def test_acks_queue_and_statuses_do_not() -> None:
    sends = _burst(200)
    acks = [a.at for a in sends if a.key == "0x7b"]
    statuses = [a.at for a in sends if a.key.startswith("0x83")]
    assert len(acks) == 200 and len(statuses) == 200
    # FIFO service: every ack leaves after the previous one, and the 200th long after the 1st.
    assert acks == sorted(acks) and acks[-1] > 10 * max(acks[0], 1e-3)
    # Reports follow their own command's result, by at most the learned latency of a status
    # after its command: no queue of their own.
    results = [a.at for a in sends if a.key.startswith("0x73:f9")]
    model = load_default_model()
    ex = model.exchange("0x73:f8:f0", "device")
    assert ex is not None
    worst = max(r.latency.quantile(1.0) for r in ex.responses if r.key.startswith("0x83"))
    for res, st in zip(results, statuses, strict=True):
        assert res <= st <= max(res, worst) + 1e-9
    assert statuses == sorted(statuses)  # 0x83 counters leave in order
