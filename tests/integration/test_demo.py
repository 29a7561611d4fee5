# `make demo` runs tools.demo: it must work end to end (decode, learn, simulate, diff).
from __future__ import annotations

import pytest

from cyncsim.tools.demo import main


def test_demo_runs_the_whole_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main() == 0
    out = capsys.readouterr().out
    assert "== cyncsim import" in out or "showing the shipped model" in out
    assert "power on        acked" in out and "-> on=True" in out
    assert "power off       acked" in out and "-> on=False" in out
    assert "verdict: CONFORMANT" in out
