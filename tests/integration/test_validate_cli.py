# `cyncsim validate` end to end on a shared capture (a late time split, 3 runs, idle gaps cut,
# so it stays short): the table and --json have one row per held-out request kind with the
# real statistics, the runs' envelope, the p-value and the verdict, with the note that 3 runs
# cannot reject; the replays' loop lateness is reported; the exit status follows the verdicts
# (0 when no kind is implausible, else 1; at 20 runs a shifted sample is implausible); --html
# writes the plots; bad input is one line and exit status 2.
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from cyncsim.replay.conformance.predictive import predictive_check
from cyncsim.replay.conformance.validation import KindResult, ValidationReport
from cyncsim.tools import validate_cmd
from cyncsim.tools.cli import main
from tests.support import capture_path

LOCAL = "capture_20251107_152132.txt"
TLS_ONLY = "capture_20251106_081101.txt"
FAST = ["--split", "0.8", "--runs", "3", "--max-gap", "0.5", "--seed", "5"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(argv, out)
    return code, out.getvalue(), capsys.readouterr().err


def test_json_shape_and_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["validate", str(capture_path(LOCAL)), *FAST, "--json"], capsys)
    doc = json.loads(out)
    assert {"verdict", "kinds", "runs", "seed", "split", "directions", "notes"} <= set(doc)
    assert doc["runs"] == 3 and doc["seed"] == 5 and doc["split"] == 0.8
    note = "3 runs: the KS rank cannot reject (p >= 1/4 = 0.250 > 0.05); use 20 or more"
    assert note in doc["notes"] and doc["rule"]["ks_rank_can_reject"] is False
    assert 0 <= doc["loop_lateness_ms"]["p50_median"] <= doc["loop_lateness_ms"]["p99_worst"]
    kinds = {k["kind"]: k for k in doc["kinds"]}
    assert "0x73:f8:f0 -> 0x7b" in kinds and "0xd3 -> 0xd8" in kinds
    for k in doc["kinds"]:
        assert k["verdict"] in ("plausible", "implausible", "insufficient")
        assert len(k["run_counts"]) == 3
        assert isinstance(k["n_train"], int) or k["n_train"] is None
        assert {"real", "low", "high", "inside"} <= set(k["p50"]) and "max" in k
        if k["n_real"] < 10:
            assert k["verdict"] == "insufficient"
    assert kinds["0x73:f8:f0 -> 0x7b"]["answered_by"] == "device"
    assert kinds["0x73:f8:f0 -> 0x7b"]["n_train"] > 0  # learned from the first 80%
    assert kinds["0xd3 -> 0xd8"]["answered_by"] == "cloud"
    bad = any(k["verdict"] == "implausible" for k in doc["kinds"])
    assert code == (1 if bad else 0), err
    assert doc["verdict"] == ("implausible" if bad else "plausible")


def test_table_and_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    html = tmp_path / "report.html"
    code, out, _ = _run(["validate", str(capture_path(LOCAL)), *FAST, "--html", str(html)], capsys)
    assert code in (0, 1)
    assert "kind" in out and "n real" in out and "n train" in out and "verdict" in out
    assert "0x73:f8:f0 -> 0x7b" in out
    assert "note: 3 runs: the KS rank cannot reject" in out
    assert "* = outside (not judged)" in out and "event-loop lateness in the replays" in out
    assert f"HTML report written to {html}" in out
    assert out.strip().splitlines()[-2].startswith("verdict: ")
    page = html.read_text(encoding="utf-8")
    assert page.count('class="plot"') >= 2 and 'id="kinds"' in page


def _report(verdict_shift: float) -> ValidationReport:
    runs = [[0.01 + 0.001 * i for i in range(20)] for _ in range(20)]
    real = [x + verdict_shift for x in runs[0]]
    check = predictive_check(real, runs)
    report = ValidationReport(["a.txt"], ["a.txt"], 0.67, 20, 1, 5.0)
    report.kinds.append(KindResult(("local", "device", "0x73", "0x7b"), "controller", check, {}, 0))
    return report


@pytest.mark.parametrize(("shift", "code"), [(0.0, 0), (1.0, 1)])
def test_exit_status_follows_the_verdicts(
    monkeypatch: pytest.MonkeyPatch, shift: float, code: int
) -> None:
    async def fake(*_a: object, **_k: object) -> ValidationReport:
        return _report(shift)

    monkeypatch.setattr("cyncsim.simulator.validate.validate", fake)
    parser = argparse.ArgumentParser()
    validate_cmd.register(parser.add_subparsers(), "")
    args = parser.parse_args(["validate", "a.txt"])
    out = io.StringIO()
    assert validate_cmd.run(args, out) == code
    assert ("implausible 0x73 -> 0x7b" in out.getvalue()) == bool(code)


def test_missing_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.txt"
    code, out, err = _run(["validate", str(missing)], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cyncsim validate: error: ")
    assert "nope.txt" in lines[0]


def test_capture_without_cync_traffic_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["validate", str(capture_path(TLS_ONLY)), "--runs", "2"], capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"cyncsim validate: error: {capture_path(TLS_ONLY)}: no decodable Cync traffic"
    ]


def test_bad_options_are_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["validate", "x.txt", "--split", "1.5"], io.StringIO())
    assert exc.value.code == 2
    assert "not a fraction between 0 and 1" in capsys.readouterr().err
    code, _, err = _run(["validate", str(capture_path(LOCAL)), "--runs", "1"], capsys)
    assert code == 2 and "--runs 1: need at least 2" in err


def test_holdout_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the held-out file: the capture's first 20 s (records are three lines each)
    records = capture_path(LOCAL).read_text(encoding="utf-8").split("\n\n")
    head = [r for r in records if r.strip() and r[:19] < "2025-11-07T15:21:53"]
    held = tmp_path / "first20s.txt"
    held.write_text("\n\n".join(head) + "\n\n", encoding="utf-8")
    code, out, _ = _run(
        ["validate", str(capture_path(LOCAL)), "--holdout", str(held), "--runs", "2",
         "--max-gap", "0.5", "--seed", "3", "--json"],
        capsys,
    )  # fmt: skip
    doc = json.loads(out)
    assert doc["split"] is None
    assert doc["training"] == [LOCAL] and doc["held_out"] == ["first20s.txt"]
    assert doc["kinds"] and all(k["variant"] == "local" for k in doc["kinds"])
    assert code == (1 if doc["verdict"] == "implausible" else 0)
