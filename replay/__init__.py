# cyncsim's pure core: codec, capture readers, learned model, engine, conformance diff.
# Nothing in this package opens a socket, awaits, or reads a clock implicitly.
from cyncsim.replay.errors import (
    CaptureError,
    ChaosConfigError,
    CyncError,
    HandshakeError,
    ModelError,
    PacketDecodeError,
)
from cyncsim.replay.framer import FramerFinding, PacketFramer
from cyncsim.replay.protocol import (
    AckPacket,
    CyncPacket,
    FramedPacket,
    FrameKind,
    GenericPacket,
    HelloPacket,
    IdPacket,
    InnerFrame,
    PacketType,
    decode_packet,
    frame_checksum,
    packet_name,
)

__all__ = [
    "AckPacket",
    "CaptureError",
    "ChaosConfigError",
    "CyncError",
    "CyncPacket",
    "FrameKind",
    "FramedPacket",
    "FramerFinding",
    "GenericPacket",
    "HandshakeError",
    "HelloPacket",
    "IdPacket",
    "InnerFrame",
    "ModelError",
    "PacketDecodeError",
    "PacketFramer",
    "PacketType",
    "decode_packet",
    "frame_checksum",
    "packet_name",
]
