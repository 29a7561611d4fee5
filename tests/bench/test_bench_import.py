# `cyncsim bench import` and the bench framework: the command runs and its JSON is well formed.
#
# No timing asserts (the machines are shared): the tests check shapes, counts and that every
# derived number (rates, ratios, pass/fail) follows from the measured samples.
from __future__ import annotations

import io
import json
import math
import statistics
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from cyncsim.captures import shared_captures_dir
from cyncsim.replay.capture import read_capture
from cyncsim.replay.capture.pcapwrite import generate_benchmark_pcap
from cyncsim.replay.errors import CyncError
from cyncsim.tools.bench.common import (
    SUITES,
    BenchOptions,
    Case,
    Check,
    Column,
    Log,
    SuiteResult,
    format_table,
    load_suite,
    measure,
    measure_rounds,
    render,
)
from cyncsim.tools.bench.import_suite import dpkt_parse, pcap_slice, struct_floor, text_row
from cyncsim.tools.bench_cmd import suite_json, write_json
from cyncsim.tools.cli import main

SEGMENT_ROWS = ["reader", "import", "dpkt", "floor", "scapy"]
SCALE = "scale: cyncsim import of generated pcaps, each in a fresh process"
pytestmark = pytest.mark.bench


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)


@pytest.mark.slow
def test_bench_import_quick_writes_well_formed_json(tmp_path: Path) -> None:
    dest = tmp_path / "import.json"
    out = io.StringIO()
    code = main(["bench", "import", "--quick", "--json", str(dest)], out=out)
    assert code == 0
    obj = json.loads(dest.read_text())
    assert obj["suite"] == "import" and obj["quick"] is True
    assert {"python", "cpu_count", "platform"} <= set(obj["machine"])
    params = obj["params"]
    assert params["segments"] >= 20_000 and params["connections"] >= 20
    assert params["scapy_segments"] == 2_000 and params["repeats"] == 3
    rows = {row["name"]: row for row in obj["rows"]}
    assert [row["name"] for row in obj["rows"]] == [*SEGMENT_ROWS, "text"]
    for name in SEGMENT_ROWS:
        row = rows[name]
        assert row["unit"] == "segments"
        assert row["items"] == (params["scapy_segments"] if name == "scapy" else params["segments"])
        assert len(row["samples_s"]) == 3 and all(s > 0 for s in row["samples_s"])
        assert _close(row["median_s"], statistics.median(row["samples_s"]))
        assert _close(row["per_s"], row["items"] / row["median_s"])
        assert _close(row["vs_dpkt"], row["per_s"] / rows["dpkt"]["per_s"])
        assert _close(row["vs_floor"], row["per_s"] / rows["floor"]["per_s"])
    checks = {c["name"]: c for c in obj["checks"]}
    assert [c["target"] for c in obj["checks"]] == [100_000, 3.0, 0.4, 100_000, 3.0, 1.2, 1024]
    assert _close(checks["reader segments/s"]["value"], rows["reader"]["per_s"])
    assert _close(checks["reader / dpkt"]["value"], rows["reader"]["vs_dpkt"])
    assert _close(checks["reader / floor"]["value"], rows["reader"]["vs_floor"])
    assert _close(checks["import segments/s"]["value"], rows["import"]["per_s"])
    assert _close(checks["import / dpkt"]["value"], rows["import"]["vs_dpkt"])
    for c in obj["checks"]:
        assert c["passed"] is (
            c["value"] >= c["target"] if c["op"] == ">=" else c["value"] <= c["target"]
        )
    # the scale table: 200k and 1M segments at --quick (5M at full size), each imported in a
    # child process; time per segment and peak RSS
    scale = obj["details"][SCALE]
    assert [round(r["segments"], -3) for r in scale] == [200_000, 1_000_000]
    assert params["scale_segments"] == [200_000, 1_000_000]
    for r in scale:
        assert r["packets"] > 0 and r["seconds"] > 0 and 0 < r["peak_rss_mb"] < 4096
        assert r["cpu_seconds"] > 0
        assert _close(r["us_per_segment"], r["cpu_seconds"] / r["segments"] * 1e6)
    fastest = min(r["us_per_segment"] for r in scale)
    assert _close(
        checks["scale: slowest / fastest CPU time per segment"]["value"],
        max(r["us_per_segment"] for r in scale) / fastest,
    )
    assert _close(checks["scale: peak RSS"]["value"], max(r["peak_rss_mb"] for r in scale))
    assert obj["passed"] is all(c["passed"] for c in obj["checks"])
    text = rows["text"]
    files = sorted(shared_captures_dir().glob("*.txt")) if shared_captures_dir().is_dir() else []
    if files:
        assert text["status"] == "ok"
        assert text["items"] == sum(read_capture(p).packet_count for p in files)
        assert _close(text["per_s"], text["items"] / text["median_s"])
    else:
        assert text["status"] == "skipped" and text["reason"]
    printed = out.getvalue()
    assert "== bench import (quick)" in printed
    for name in SEGMENT_ROWS:
        assert f"\n{name} " in printed
    assert "reader / dpkt >= 3.00x" in printed and "import / dpkt >= 3.00x" in printed
    assert SCALE in printed


def test_unknown_suite_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "no-such-suite"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_every_registered_suite_loads_and_describes_itself() -> None:
    assert {"import", "baseline", "acks", "chaos", "group", "overhead", "fleet", "startup"} <= set(
        SUITES
    )
    for name in SUITES:
        module = load_suite(name)
        assert callable(module.run)
        spec = module.SPEC
        assert spec.name == name and spec.columns
        assert spec.full is not None and spec.quick is not None


def test_a_missing_extra_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "dpkt", None)  # import dpkt now raises ImportError
    assert main(["bench", "import", "--quick"], out=io.StringIO()) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'cyncsim[bench]'" in err


def test_floor_slice_and_dpkt_count_the_generated_records(tmp_path: Path) -> None:
    pcap = tmp_path / "small.pcap"
    stats = generate_benchmark_pcap(pcap, segments=300, connections=3, seed=1)
    assert struct_floor(pcap) == stats["segments"]
    assert dpkt_parse(pcap) == (stats["segments"], stats["payload_bytes"])
    part = tmp_path / "part.pcap"
    assert pcap_slice(pcap, part, 40) == 40
    assert struct_floor(part) == 40
    assert dpkt_parse(part)[0] == 40
    assert pcap_slice(pcap, part, 10**6) == stats["segments"]  # more than there is: all
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a pcap at all, not even close")
    with pytest.raises(CyncError, match="not a classic pcap"):
        struct_floor(bad)


def test_text_row_skips_a_missing_folder(tmp_path: Path) -> None:
    row = text_row(tmp_path / "absent", 1)
    assert row["status"] == "skipped" and "absent" in row["reason"]
    (tmp_path / "notes.txt").write_text("not a capture\n")
    row = text_row(tmp_path, 1)
    assert row["status"] == "skipped" and "no MITM text logs" in row["reason"]


def test_measure_takes_the_median_and_verifies_every_run() -> None:
    seen: list[int] = []
    counter = iter(range(10))
    timing = measure(lambda: next(counter), 3, seen.append)
    assert seen == [0, 1, 2]
    assert len(timing.samples) == 3 and timing.median == statistics.median(timing.samples)

    def reject(value: int) -> None:
        raise CyncError(f"wrong {value}")

    with pytest.raises(CyncError, match="wrong 0"):
        measure(lambda: 0, 3, reject)
    with pytest.raises(ValueError, match="at least 1"):
        measure(lambda: 0, 0)


def test_measure_rounds_interleaves_the_cases() -> None:
    order: list[str] = []
    checked: list[str] = []
    cases: dict[str, Case] = {
        "a": (lambda: order.append("a"), lambda _: checked.append("a")),
        "b": (lambda: order.append("b"), None),
    }
    timings = measure_rounds(cases, 3)
    assert order == ["a", "b"] * 3 and checked == ["a"] * 3
    assert set(timings) == {"a", "b"} and all(len(t.samples) == 3 for t in timings.values())


def test_check_comparisons() -> None:
    assert Check("a", 3.0, 3.0).passed and not Check("a", 2.9, 3.0).passed
    assert Check("b", 1.0, 2.0, op="<=").passed and not Check("b", 2.1, 2.0, op="<=").passed
    with pytest.raises(ValueError, match="unknown comparison"):
        _ = Check("c", 1.0, 1.0, op="==").passed


def test_table_aligns_numbers_and_marks_missing_values() -> None:
    cols = [Column("name", "name"), Column("rate", "rate", ",.0f"), Column("ok", "ok")]
    text = format_table(cols, [{"name": "a", "rate": 1234.4, "ok": True}, {"name": "bbb"}])
    lines = text.splitlines()
    assert lines[0].split() == ["name", "rate", "ok"]
    assert lines[2].split() == ["a", "1,234", "PASS"]
    assert lines[3].split() == ["bbb", "-", "-"]
    assert lines[2].index("1,234") + len("1,234") == lines[0].index("rate") + len("rate")


def test_suite_json_is_strict_json(tmp_path: Path) -> None:
    result = SuiteResult(
        suite="demo",
        title="t",
        columns=[Column("name", "name"), Column("v", "v", ".1f")],
        rows=[{"name": "x", "v": math.inf, "nested": [math.nan, 1.5]}],
        checks=[Check("v", 1.0, 2.0)],
        sections=[("extra", [Column("k", "k")], [{"k": "z"}])],
    )
    obj: dict[str, Any] = suite_json(result, {"python": "3"})
    dest = tmp_path / "demo.json"
    write_json(dest, obj)
    back = json.loads(dest.read_text())
    assert back["rows"] == [{"name": "x", "v": None, "nested": [None, 1.5]}]
    assert back["passed"] is False and back["checks"][0]["passed"] is False
    assert back["details"] == {"extra": [{"k": "z"}]}
    assert "extra\nk" in render(result) and "FAIL" in render(result)


def _fake_suite(name: str, value: float) -> types.ModuleType:
    module = types.ModuleType(f"tests_fake_{name}_suite")

    def run(opts: BenchOptions, log: Log) -> SuiteResult:
        assert opts.workdir.is_dir() and opts.repeats == 2 and opts.quick
        return SuiteResult(
            suite=name,
            title="fake",
            columns=[Column("name", "name"), Column("v", "v")],
            rows=[{"name": "only", "v": value}],
            checks=[Check("v", value, 1.0)],
            quick=opts.quick,
        )

    module.run = run  # type: ignore[attr-defined]
    return module


def test_all_runs_every_registered_suite_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for registered in list(SUITES):  # only the two fakes below: no real suite runs
        monkeypatch.delitem(SUITES, registered)
    for name, value in (("one", 2.0), ("two", 0.5)):
        module = _fake_suite(name, value)
        monkeypatch.setitem(sys.modules, module.__name__, module)
        monkeypatch.setitem(SUITES, name, (module.__name__, "fake"))
    dest = tmp_path / "all.json"
    argv = ["bench", "all", "--quick", "--repeats", "2", "--json", str(dest)]
    out = io.StringIO()
    assert main(argv, out=out) == 0  # a missed target is reported, not fatal...
    obj = json.loads(dest.read_text())
    assert set(obj) == {"machine", "suites"}
    assert [s["suite"] for s in obj["suites"]] == ["one", "two"]
    assert [s["passed"] for s in obj["suites"]] == [True, False]
    assert out.getvalue().index("== bench one") < out.getvalue().index("== bench two")
    assert main([*argv, "--check"], out=io.StringIO()) == 1  # ...unless --check is given


def test_unwritable_json_destination_is_refused_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no such folder" / "out.json"
    assert main(["bench", "import", "--json", str(missing)], out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert f"--json {missing}: no such directory ({missing.parent})" in err
    assert "Traceback" not in err
    assert main(["bench", "import", "--json", str(tmp_path)], out=io.StringIO()) == 2
    assert "is a directory, not a file" in capsys.readouterr().err
