# Long runs stay bounded: the chaos fault log and the cloud simulator's packet history.
from __future__ import annotations

from cyncsim.replay.chaos import ChaosConfig, ChaosPolicy
from cyncsim.replay.protocol import decode_packet
from cyncsim.simulator.cloud import _keep


def test_fault_log_is_bounded_and_counts_stay_exact() -> None:
    policy = ChaosPolicy(ChaosConfig(packet_loss_rate=1.0), 5)
    policy.log_limit = 100
    for i in range(1000):
        assert policy.on_packet("to_device", b"\xd3\x00\x00\x00\x00", float(i)) == []
    assert len(policy.log) <= 100 and policy.log_dropped >= 900
    assert policy.log[-1].packet_no == 1000  # the most recent decisions are kept
    assert policy.fault_counts() == {"drop": 1000}
    assert policy.fault_counts("from_device") == {}


def test_cloud_history_is_bounded() -> None:
    ping = decode_packet(b"\xd3\x00\x00\x00\x00")
    seen: list[tuple[float, str, object]] = []
    for i in range(1000):
        _keep(seen, (float(i), "device", ping), 100)  # type: ignore[arg-type]
    assert 50 <= len(seen) <= 100 and seen[-1][0] == 999.0
