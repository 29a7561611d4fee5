# From captures to a DeviceModel: learning as the packets are read.
#
# Strategy: a ModelLearner takes each packet as the reader frames it and hands it to the
# exchange learner (learn.py) and the behaviour learner (behaviour.py), which keep bounded
# tallies, never the packets.  ``import_files`` reads each file in chunks through
# capture.stream.CaptureStream (every format the stream reader knows), so memory stays
# bounded however large the capture; ``learn_model`` learns a result that was already read
# whole, flow by flow (``feed(flow, fp)``: the reference path).  Each packet is decoded once,
# by the reader.  Within a flow, packets are taken in the order they were captured.
#
# Speed: the reader appends each packet to its flow's buffer (``buffer(flow)``, a
# capture.model.FlowSink) as a (sender, ts, packet) tuple: no FlowPacket.  After each chunk
# the buffers are learned flow by flow (``learn_buffered``): reading a chunk, then learning
# it, keeps each loop's code and data warm (interleaving the two per packet cost a third
# more); a flow of one connection is learned by a FlowLearner (_hot.py), one loop for both
# learners, which append their samples to plain list buffers; those are spilled into
# sketches once per chunk (bounded memory).  The cyclic GC is paused while importing: what
# is learned is kept, and what is not is freed by reference counting.
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cyncsim.replay.capture import (
    DEFAULT_CLOUD_PORTS,
    CaptureResult,
    Finding,
    Flow,
    FlowPacket,
    load_bytes,
)
from cyncsim.replay.capture.model import PacketBuffer, gc_paused
from cyncsim.replay.capture.stream import CaptureStream
from cyncsim.replay.model._hot import FlowLearner
from cyncsim.replay.model.behaviour import BehaviourLearner
from cyncsim.replay.model.learn import ExchangeLearner
from cyncsim.replay.model.store import DeviceModel

__all__ = ["CHUNK", "ModelLearner", "import_captures", "import_files", "learn_model"]

CHUNK = 1 << 20  # bytes read at a time
Progress = Callable[[int, int], None]


class ModelLearner:
    """A DeviceModel learned from packets fed one at a time, with bounded memory."""

    def __init__(self) -> None:
        self.exchanges = ExchangeLearner()
        self.behaviour = BehaviourLearner()
        self.sources: dict[str, str] = {}  # path -> sha256 of its bytes ("" when unknown)
        self.findings: Counter[str] = Counter()
        self.packets: Counter[str] = Counter()  # per source
        self.order: list[Flow] = []  # flows in the reader's order, when it gives one
        # id(flow) -> (flow, what learns it, the packets the reader buffered), while open
        self._open: dict[int, tuple[Flow, FlowLearner | _Mixed, PacketBuffer]] = {}

    def add_source(self, path: str, sha256: str = "") -> None:
        self.sources[path] = sha256

    def feed(self, flow: Flow, fp: FlowPacket) -> None:
        self.packets[flow.source] += 1
        if flow.kind != "cync":
            return
        self.exchanges.feed(flow, fp)
        self.behaviour.feed(flow, fp)

    def buffer(self, flow: Flow) -> PacketBuffer:
        """Where the reader puts the packets of ``flow`` (a capture FlowSink's buffer), for
        ``learn_buffered``: for one connection a FlowLearner (_hot.py) learns them, for a
        flow that mixes connections both learners' reference paths."""
        learn: FlowLearner | _Mixed = (
            FlowLearner(self.exchanges, self.behaviour, flow) if flow.exact else _Mixed(self, flow)
        )
        buf: PacketBuffer = []
        self._open[id(flow)] = (flow, learn, buf)
        return buf

    def learn_buffered(self, closed: list[Flow]) -> None:
        """Learn what the reader buffered, flow by flow (each in stream order); then forget
        the flows in ``closed``, which the reader has finished."""
        for flow, learn, buf in self._open.values():
            if buf:
                self.packets[flow.source] += len(buf)
                self.exchanges.packets += len(buf)
                learn.learn(buf)
                buf.clear()
        for flow in closed:
            self._open.pop(id(flow), None)
        self.spill()

    def spill(self) -> None:
        self.exchanges.spill()
        self.behaviour.spill()

    def add_findings(self, findings: list[Finding]) -> None:
        for f in findings:
            self.findings[f.reason] += 1

    def finish(self) -> DeviceModel:
        exchanges, variants = self.exchanges.finish(self.order)
        behaviour, devices = self.behaviour.finish(variants, self.order)
        model = DeviceModel(exchanges=exchanges, behaviour=behaviour, devices=devices)
        model.stalls = dict(self.exchanges.stalls)  # stalls.py, per variant
        for src, digest in self.sources.items():
            model.sources.append(
                {
                    "name": Path(src).name,
                    "sha256": digest,
                    "packets": self.packets[src],
                    "variant": variants.get(src, "none"),
                }
            )
        model.findings = dict(self.findings)
        return model


class _Mixed:
    """Learns a flow that mixes connections: ModelLearner.feed's path."""

    __slots__ = ("flow", "learner")

    def __init__(self, learner: ModelLearner, flow: Flow) -> None:
        self.learner = learner
        self.flow = flow

    def learn(self, packets: PacketBuffer) -> None:
        ex, beh = self.learner.exchanges, self.learner.behaviour
        ex_state, beh_state = ex.state_of(self.flow), beh.state_of(self.flow)
        for sender, ts, pkt in packets:
            fp = FlowPacket(ts, sender, pkt, 0)
            ex.feed_state(ex_state, fp)
            beh.feed_state(beh_state, fp)


def learn_model(result: CaptureResult, raw_sources: dict[str, bytes] | None = None) -> DeviceModel:
    """Learn a model from already-read captures (``raw_sources`` gives file bytes to hash)."""
    learner = ModelLearner()
    for src in result.sources:
        data = (raw_sources or {}).get(src, b"")
        learner.add_source(src, hashlib.sha256(data).hexdigest() if data else "")
    for flow in result.flows:
        learner.order.append(flow)
        if flow.kind != "cync":
            learner.packets[flow.source] += len(flow.packets)
            continue
        for fp in sorted(flow.packets, key=lambda fp: fp.ts):  # stable: stream order on ties
            learner.feed(flow, fp)
        learner.spill()
    learner.add_findings(result.findings)
    return learner.finish()


def import_files(
    paths: list[str],
    *,
    cloud_ports: tuple[int, ...] = DEFAULT_CLOUD_PORTS,
    progress: Callable[[str], Progress | None] | None = None,
    learner: ModelLearner | None = None,
) -> ModelLearner:
    """Read and learn ``paths`` chunk by chunk; ``progress(path)`` gives a (done, total)
    callback per file.  Returns the learner (``finish()`` gives the model)."""
    learner = learner or ModelLearner()
    with gc_paused():  # what is learned is kept; the rest is freed by reference counting
        for path in paths:
            cb = progress(path) if progress is not None else None
            _import_file(path, learner, cloud_ports, cb)
    return learner


def _import_file(
    path: str, learner: ModelLearner, cloud_ports: tuple[int, ...], cb: Progress | None
) -> None:
    load_bytes(path, 0)  # a missing file or a folder: the reader's one clear error
    stream = CaptureStream(path, cloud_ports=cloud_ports, consumer=learner.buffer)
    digest = hashlib.sha256()
    total = Path(path).stat().st_size
    done = 0
    with Path(path).open("rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            batch = stream.feed(chunk) if chunk else stream.close()
            learner.learn_buffered(batch.flows)  # the packets the chunk completed
            learner.add_findings(batch.findings)
            learner.order.extend(batch.flows)
            if not chunk:
                break
            digest.update(chunk)
            done += len(chunk)
            if cb is not None:
                cb(done, total)
    learner.add_source(path, digest.hexdigest() if done else "")


def import_captures(paths: list[str], **kwargs: Any) -> DeviceModel:
    """Read captures and learn a model from them."""
    return import_files(paths, **kwargs).finish()
