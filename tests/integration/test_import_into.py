# `cyncsim import NEW... --into MODEL -o OUT` through the CLI: A then B equals B then A (byte
# for byte) and equals A and B imported together; inspect lists the provenance; a capture, a
# model of another version or a capture already in the model is one line on stderr, exit 2.
from __future__ import annotations

import io
from pathlib import Path

import msgpack
import pytest

from cyncsim.replay.model import DeviceModel
from cyncsim.tools.cli import main
from tests.support import capture_path

A = "capture_20251106_085753.txt"
B = "capture_20251107_152132.txt"
SOCAT = ["socat/clean_capture_test.txt", "socat/mode_test_capture.txt"]


def _import(*args: str) -> None:
    assert main(["import", "--no-progress", *args], out=io.StringIO()) == 0


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, needle: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err


def _kinds(model: DeviceModel) -> list[tuple[object, ...]]:
    # (Request counts: tests/unit/test_model_merge.py, with the one request a merge misses.)
    return sorted(
        (e.variant, e.request, e.role, e.answered, e.ambiguous,
         sorted((r.key, r.latency.count) for r in e.responses))
        for e in model.exchanges
    )  # fmt: skip


def test_into_equals_importing_together_in_any_order(tmp_path: Path) -> None:
    a, b = str(capture_path(A)), str(capture_path(B))
    socat = [str(capture_path(n)) for n in SOCAT]
    _import(a, "-o", str(tmp_path / "a"))
    _import(b, *socat, "--into", str(tmp_path / "a"), "-o", str(tmp_path / "ab"))
    _import(b, *socat, "-o", str(tmp_path / "b"))
    _import(a, "--into", str(tmp_path / "b"), "-o", str(tmp_path / "ba"))
    _import(a, b, *socat, "-o", str(tmp_path / "all"))
    assert (tmp_path / "ab").read_bytes() == (tmp_path / "ba").read_bytes()
    merged, together = DeviceModel.load(tmp_path / "ab"), DeviceModel.load(tmp_path / "all")
    assert _kinds(merged) == _kinds(together)
    assert merged.findings == together.findings
    assert sorted(map(str, merged.sources)) == sorted(map(str, together.sources))
    hello = merged.exchange("0x23", "cloud", "cloud")
    assert hello is not None and 0.040 <= hello.responses[0].latency.p50 <= 0.050
    # The model named by --into is read, never written.
    assert DeviceModel.load(tmp_path / "a").sources[0]["name"] == A


def test_inspect_lists_provenance(tmp_path: Path) -> None:
    socat = [str(capture_path(n)) for n in SOCAT]
    _import(socat[0], "-o", str(tmp_path / "one"))
    _import(socat[1], "--into", str(tmp_path / "one"), "-o", str(tmp_path / "two"))
    out = io.StringIO()
    assert main(["inspect", str(tmp_path / "two")], out=out) == 0
    text = out.getvalue()
    for name in ("clean_capture_test.txt", "mode_test_capture.txt"):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"  {name}: "))
        assert "variant cloud" in line and " packets, sha256 " in line


def test_into_refuses_what_cannot_be_merged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    socat = str(capture_path(SOCAT[0]))
    other = str(capture_path(SOCAT[1]))
    out = str(tmp_path / "out")
    code = main(["import", "--no-progress", other, "--into", socat, "-o", out])
    _one_line_error(capsys, code, "is a socat capture, not a model")
    old = tmp_path / "old.msgpack"
    old.write_bytes(msgpack.packb({"format": "cyncsim-model", "version": 0}))
    code = main(["import", "--no-progress", other, "--into", str(old), "-o", out])
    _one_line_error(capsys, code, "model format version 0")
    _import(socat, "-o", str(tmp_path / "m"))
    capsys.readouterr()
    code = main(["import", "--no-progress", socat, "--into", str(tmp_path / "m"), "-o", out])
    _one_line_error(capsys, code, "clean_capture_test.txt already in the model")
    assert not Path(out).exists()
