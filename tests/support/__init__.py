# What the tests share, in one place: test peers (a fake device, bare and listening controller
# ends), the one polling helper and the other waits, the real packets of PROTOCOL.md section
# 12 with a harmless marker command, TLS certificates, and the shared captures.
#
# Strategy: test modules import from here (``from tests.support import ...``) and never from
# each other; pytest fixtures stay in tests/conftest.py.  The package is split by concern into
# private modules only to keep each of them small.
from __future__ import annotations

from tests.support._captures import (
    REPO_ROOT,
    CaptureRecord,
    Flows,
    Packet,
    capture_path,
    capture_records,
    decoded_flows,
    indices,
    shared_doc,
    write_text_log,
)
from tests.support._certs import self_signed_cert
from tests.support._controllers import MiniController, RawController, answered, marker_answered
from tests.support._fake_device import FakeDevice
from tests.support._packets import (
    ACK_7B,
    AUTH,
    CONTROL,
    CT_58,
    DEV,
    FW_DEVICE,
    FW_NETWORK,
    GROUP_BRI,
    GROUP_OFF,
    HELLO_ACK,
    MARKER_BRIGHTNESS,
    MESH_ACK,
    MESH_REQ,
    POWER_OFF,
    POWER_ON,
    RESULT_52,
    RESULT_AF,
    RESULT_BRI,
    RESULT_CT,
    RESULT_OFF,
    RESULT_ON,
    frame_seq,
    marker,
    request_of,
    status_of,
)
from tests.support._peer import Peer, reset
from tests.support._wait import assert_no_other_tasks, eventually, loop_passes, socket_fds

__all__ = [
    "ACK_7B",
    "AUTH",
    "CONTROL",
    "CT_58",
    "DEV",
    "FW_DEVICE",
    "FW_NETWORK",
    "GROUP_BRI",
    "GROUP_OFF",
    "HELLO_ACK",
    "MARKER_BRIGHTNESS",
    "MESH_ACK",
    "MESH_REQ",
    "POWER_OFF",
    "POWER_ON",
    "REPO_ROOT",
    "RESULT_52",
    "RESULT_AF",
    "RESULT_BRI",
    "RESULT_CT",
    "RESULT_OFF",
    "RESULT_ON",
    "CaptureRecord",
    "FakeDevice",
    "Flows",
    "MiniController",
    "Packet",
    "Peer",
    "RawController",
    "answered",
    "assert_no_other_tasks",
    "capture_path",
    "capture_records",
    "decoded_flows",
    "eventually",
    "frame_seq",
    "indices",
    "loop_passes",
    "marker",
    "marker_answered",
    "request_of",
    "reset",
    "self_signed_cert",
    "shared_doc",
    "socket_fds",
    "status_of",
    "write_text_log",
]
