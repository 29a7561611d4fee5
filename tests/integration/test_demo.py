# `make demo` runs tools.demo: it must work end to end (decode, learn, simulate, diff).
from __future__ import annotations

import re

import pytest

from cyncsim.tools.demo import main


def test_demo_runs_the_whole_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main() == 0
    out = capsys.readouterr().out
    assert "== cyncsim import" in out or "showing the shipped model" in out
    assert "power on        acked" in out and "-> on=True" in out
    assert "power off       acked" in out and "-> on=False" in out
    assert "verdict: CONFORMANT" in out
    # It says its time scale, and each time beside its real-time equivalent.
    assert "time scale 0.1" in out
    for line in out.splitlines():
        if "ack+result in" in line:
            ms, real = re.findall(r"in +([\d.]+) ms \(real time +(\d+) ms\)", line)[0]
            assert abs(float(ms) * 10 - float(real)) <= 1.0, line
