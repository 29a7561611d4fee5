# `cyncsim bench fuzz`: random and mutated packets against everything a peer's bytes reach.
#
# Strategy: a seeded generator mutates real packets (the shipped model's exemplars, built
# requests, the shared captures' packets).  Each batch goes to every target: decode_packet,
# PacketFramer.feed in random chunks and a device engine's receive.  An exception that is not a
# CyncError is "untyped": counted, the first few listed with the input's hex.
from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyncsim import CyncDeviceSimulator, CyncError, PacketType, decode_packet, read_capture
from cyncsim.captures import load_default_model
from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.payloads import StatusReport, build_hello, build_report, build_simple
from cyncsim.replay.protocol import HEADER_LEN
from cyncsim.tools.bench.common import BenchOptions, Check, Column, Log, SuiteResult, SuiteSpec
from cyncsim.tools.bench.simkit import command_packet

__all__ = ["MUTATIONS", "SPEC", "TARGETS", "fuzz", "mutate", "run", "seed_packets"]

SEED = 16
BATCH = 5_000
LISTED = 5  # untyped exceptions listed per target
DEVICE_ID = bytes.fromhex("5f000001")
FIRST = "first untyped exceptions"
SPEC = SuiteSpec(
    "fuzz",
    full=1_000_000,  # inputs
    quick=20_000,
    columns=[
        Column("name", "target"),
        Column("inputs", "inputs", ",d"),
        Column("typed", "CyncError", ",d"),
        Column("untyped", "untyped", ",d"),
        Column("seconds", "seconds", ",.2f"),
        Column("per_s", "inputs/s", ",.0f"),
    ],
    details={FIRST: [Column(k, k) for k in ("target", "exception", "input")]},
)


def seed_packets(captures: Path | None) -> list[bytes]:
    """Real packets to mutate: model exemplars, built requests, the captures' Cync packets."""
    model = load_default_model()
    seeds = {r.template.exemplar for e in model.exchanges for r in e.responses}
    seeds |= {command_packet(DEVICE_ID, i, light=i % 2 == 1) for i in range(4)}
    seeds |= {build_hello(DEVICE_ID, b"1e07d0000000abcd").encode()}
    seeds |= {build_simple(t).encode() for t in (PacketType.PING, PacketType.HELLO_ACK)}
    seeds |= {build_report(DEVICE_ID, b"\0\1\0", StatusReport(1, True, 50, 50, (1, 2, 3))).encode()}
    texts = sorted(captures.glob("*.txt")) if captures is not None and captures.is_dir() else []
    for path in texts:
        seeds |= {fp.packet.encode() for flow in read_capture(path).flows for fp in flow.packets}
    return sorted(seeds)


Mutation = Callable[[random.Random, bytearray, list[bytes]], bytearray]


def _flip(rng: random.Random, data: bytearray, seeds: list[bytes]) -> bytearray:
    for _ in range(rng.randint(1, 4)):
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return data


def _length_lie(rng: random.Random, data: bytearray, seeds: list[bytes]) -> bytearray:
    if len(data) >= HEADER_LEN:
        lie = rng.choice((0, 1, len(data), 0xFFFF, rng.randrange(0x10000)))
        data[3:5] = lie.to_bytes(2, "big")
    return data


def _splice(rng: random.Random, data: bytearray, seeds: list[bytes]) -> bytearray:
    other = rng.choice(seeds)
    cut = rng.randrange(min(len(data), len(other)) + 1)
    if rng.random() < 0.5:
        return bytearray(other[:HEADER_LEN] + data[HEADER_LEN:])
    return bytearray(data[:cut] + other[cut:])


def _insert(rng: random.Random, data: bytearray, seeds: list[bytes]) -> bytearray:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 8)) + data[at + rng.randint(0, 8) :]


MUTATIONS: dict[str, Mutation] = {
    "as is": lambda rng, data, seeds: data,
    "bit flips": _flip,
    "truncated": lambda rng, data, seeds: data[: rng.randrange(len(data) + 1)],
    "length lie": _length_lie,
    "spliced": _splice,
    "concatenated": lambda rng, data, seeds: data + rng.choice(seeds) + rng.choice(seeds)[:9],
    "bytes inserted": _insert,
    "random bytes": lambda rng, data, seeds: bytearray(rng.randbytes(rng.randrange(80))),
    "random type byte": lambda rng, data, seeds: bytearray([rng.randrange(256)]) + data[1:],
}


def mutate(rng: random.Random, seeds: list[bytes]) -> tuple[str, bytes]:
    """One input: (mutation name, bytes); a third of them mutated twice."""
    name = rng.choice(list(MUTATIONS))
    data = MUTATIONS[name](rng, bytearray(rng.choice(seeds)), seeds)
    if rng.random() < 0.3:
        data = _flip(rng, _length_lie(rng, data, seeds) if rng.random() < 0.5 else data, seeds)
    return name, bytes(data)


class _Device:
    """A device's engine (built, never started), fed as its connection feeds it."""

    def __init__(self) -> None:
        self.engine = CyncDeviceSimulator(DEVICE_ID, seed=SEED, mesh_node=1).engine
        self.engine.connection_made(0.0)
        self.now = 1.0

    def __call__(self, rng: random.Random, data: bytes) -> None:
        self.now += 0.01
        self.engine.receive(data, self.now)
        for offset, _ in PacketFramer().feed_with_offsets(data):
            length = HEADER_LEN + int.from_bytes(data[offset + 3 : offset + 5], "big")
            self.engine.receive(data[offset : offset + length], self.now)
        self.engine.poll(self.now)


def _framer(strict: bool) -> Callable[[random.Random, bytes], None]:
    def feed(rng: random.Random, data: bytes) -> None:  # in up to 5 random chunks
        framer, n = PacketFramer(strict=strict), len(data)
        cuts = sorted(rng.sample(range(1, n), min(rng.randint(0, 4), max(n - 1, 0))))
        for a, b in zip([0, *cuts], [*cuts, n], strict=True):
            framer.feed(data[a:b])

    return feed


Target = Callable[[random.Random, bytes], Any]
TARGETS: dict[str, Callable[[], Target]] = {
    "decode_packet strict": lambda: lambda rng, data: decode_packet(data),
    "decode_packet lenient": lambda: lambda rng, data: decode_packet(data, strict=False),
    "PacketFramer.feed lenient": lambda: _framer(False),
    "PacketFramer.feed strict": lambda: _framer(True),
    "DeviceEngine.receive": _Device,
}


@dataclass(slots=True)
class _Tally:
    typed: int = 0
    untyped: int = 0
    seconds: float = 0.0


def fuzz(n: int, seeds: list[bytes], targets: dict[str, Callable[[], Target]], log: Log) -> Any:
    """``n`` inputs through every target: (tallies, first untyped, mutation counts)."""
    rng = random.Random(SEED)
    made = {name: make() for name, make in targets.items()}
    tallies = {name: _Tally() for name in made}
    first: list[dict[str, str]] = []
    kinds: collections.Counter[str] = collections.Counter()
    for done in range(0, n, BATCH):
        batch = [mutate(rng, seeds) for _ in range(min(BATCH, n - done))]
        kinds.update(name for name, _ in batch)
        for name, target in made.items():
            tally, chunking = tallies[name], random.Random(rng.random())
            start = time.perf_counter()
            for _, data in batch:
                try:
                    target(chunking, data)
                except CyncError:
                    tally.typed += 1
                except Exception as exc:
                    tally.untyped += 1
                    if tally.untyped <= LISTED:
                        first.append({"target": name, "exception": repr(exc), "input": data.hex()})
            tally.seconds += time.perf_counter() - start
        if done // BATCH % 20 == 19:
            log(f"  fuzz: {done + len(batch):,} of {n:,} inputs")
    return tallies, first, kinds


def run(opts: BenchOptions, log: Log) -> SuiteResult:
    n = SPEC.size(opts)
    seeds = seed_packets(opts.captures)
    log(f"fuzz: {n:,} inputs from {len(seeds)} real packets through {len(TARGETS)} targets")
    tallies, first, kinds = fuzz(n, seeds, TARGETS, log)
    rows: list[dict[str, Any]] = [
        {"name": name, "inputs": n, "typed": t.typed, "untyped": t.untyped, "seconds": t.seconds}
        for name, t in tallies.items()
    ]
    total = {k: sum(r[k] for r in rows) for k in ("typed", "untyped", "seconds")}
    rows.append({"name": "all targets", "inputs": n, **total})
    for row in rows:
        row["per_s"] = row["inputs"] / row["seconds"] if row["seconds"] > 0 else None
    checks = [Check("untyped exceptions (all targets)", total["untyped"], 0, "<=", "", ",d")]
    title = f"{n:,} seeded random and mutated packets through every decoder a peer reaches"
    params = {"inputs": n, "seed": SEED, "seed_packets": len(seeds), "mutations": dict(kinds)}
    notes = [
        "inputs/s of 'all targets': inputs through all the targets, one after another; "
        "CyncError: inputs refused with the project's own error (expected for bad input)",
        f"mutations: {', '.join(f'{k} {v:,}' for k, v in sorted(kinds.items()))}",
    ]
    return SPEC.result(opts, title, rows, checks, params, notes, {FIRST: first})
