# Tests of replay.seeds: named streams are deterministic, independent, the same in every
# process whatever PYTHONHASHSEED, derived by one pinned algorithm, and a drawn root is logged.
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cyncsim.replay.errors import ChaosConfigError
from cyncsim.replay.seeds import SeedTree


def test_seed_tree_streams_are_deterministic_and_independent() -> None:
    a, b = SeedTree(7), SeedTree(7)
    assert [a.stream("x").random() for _ in range(3)] == [b.stream("x").random() for _ in range(3)]
    draws = {(root, name): SeedTree(root).stream(name).random() for root in (7, 8) for name in "xy"}
    assert len(set(draws.values())) == 4
    expected = hashlib.blake2b(b"7\x00x", digest_size=16, person=b"cyncsim.seeds").digest()
    assert a.derive("x") == int.from_bytes(expected, "big")
    assert 0.0 <= a.uniform("x") < 1.0 and a.uniform("x") == b.uniform("x") != a.uniform("y")


def test_seed_tree_does_not_depend_on_python_hash_seed() -> None:
    code = "from cyncsim.replay.seeds import SeedTree; print(SeedTree(3).stream('dev/x').random())"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        ).stdout
        for seed in ("1", "2")
    }
    assert outs == {f"{SeedTree(3).stream('dev/x').random()}\n"}


def test_random_root_is_logged_and_reproduces(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cyncsim.seeds"):
        tree = SeedTree()
    logged = [
        r for r in caplog.records if r.name == "cyncsim.seeds" and str(tree.root) in r.message
    ]
    assert logged
    assert SeedTree(tree.root).stream("a").random() == tree.stream("a").random()
    with pytest.raises(ChaosConfigError, match="seed='1' must be an integer"):
        SeedTree("1")  # type: ignore[arg-type]
