# One-line packet descriptions and request keys, on real packets of PROTOCOL.md section 12.
from __future__ import annotations

import pytest

from cyncsim.replay.describe import describe, request_key
from cyncsim.replay.protocol import decode_packet

CASES = [
    (
        "230000001a0338e8cf4600103165303764386365306136313761333700003c",
        "0x23",
        "id=38e8cf46 auth=1e07d8ce0a617a37",
    ),
    ("2800000002 0000", "0x28", ""),
    ("8800000003 000900", "0x88", "msg=000900"),
    ("c80000000b0d07e90b060502142 8fda8", "0xc8", "2025-11-06 02:20:40 wd=5 utc-0600"),
    ("4300000007 3d5466a6 010106", "0x43", "id=3d5466a6 msg=010106 empty"),
    (
        "430000001a38e8cf46010106050010ee010a0affffff0100ee000000000000",
        "0x43",
        "id=38e8cf46 msg=010106 1 status entries",
    ),
    (
        "430000001e325d5317010106c6200200abc520020004c420020001c320020005c29000",
        "0x43",
        "id=325d5317 msg=010106 body c620.. 23B",
    ),
    (
        "730000001f6457e7f20000007e03000000f8d00d000300000000ce00d01102000000917e",
        "0x73:f8:d0",
        "power node 206 off",
    ),
    (
        "730000001f6457e7f20000007e09000000f8d00d00090000000 00a80d01102000000537e",
        "0x73:f8:d0",
        "power group 10 off",
    ),
    (
        "73000000226457e7f20000007e01000000f8f01000010000000010 80f0110201 64ffffffff f57e",
        "0x73:f8:f0",
        "light group 16 bri=100",
    ),
    (
        "73000000226457e7f20000007e05000000f8f0100005000000 00ce00f0110201ff3a000000107e",
        "0x73:f8:f0",
        "light node 206 ct=58",
    ),
    (
        "83000000 2538e8cf46 0009007e1f000000fadb1300872511ee00ee00db110201010a0affffff0000887e",
        "0x83:fa:db",
        "status node 238 on bri=10 ct=10",
    ),
    (
        "83 00 00 00 32 32 5d 53 17 00 02 00 00 00 00 00 00 fa 00 20 00 00 00 00 00 00 00 00 ea"
        " 00 00 00 86 01 01 31 31 31 35 38 00 00 00 00 00 00 00 00 00 00 00 00 00 92 7e",
        "0x83:fa:00",
        "firmware device 11158",
    ),
    (
        "ab000003fb" + "6457e7f29f5200" + "070009" + "786c696e6b5f646576" + "00" * 1000,
        "0xab",
        "id=6457e7f2 msg=9f5200 +1012B",
    ),
    ("d300000000", "0xd3", ""),
]


@pytest.mark.parametrize(("hexstr", "key", "text"), CASES)
def test_describe_real_packets(hexstr: str, key: str, text: str) -> None:
    pkt = decode_packet(bytes.fromhex(hexstr.replace(" ", "")), strict=False)
    assert request_key(pkt) == key
    assert text in describe(pkt)


def test_malformed_frame_and_rgb() -> None:
    crafted = bytes.fromhex(
        "73 00 00 00 1f 45 88 0f 3a 00 10 00 00 7e 10 01 00 00 f8 8e 0c 00 10 01 00 00 00 50 00"
        " f7 11 02 01 01 07 7e"
    )
    pkt = decode_packet(crafted, strict=False)
    assert request_key(pkt) == "0x73"
    assert "malformed frame (bad_marker)" in describe(pkt)
    from cyncsim.replay.payloads import LightStateCommand, build_command

    rgb = build_command(
        b"\x01\x02\x03\x04", b"\0\x01\0", LightStateCommand(1, 5, 0xFF, 0xFE, (1, 2, 3))
    )
    assert "light node 5 rgb=010203" in describe(decode_packet(rgb.encode()))
    nothing = build_command(b"\x01\x02\x03\x04", b"\0\x01\0", LightStateCommand(1, 5))
    assert "no change" in describe(decode_packet(nothing.encode()))
