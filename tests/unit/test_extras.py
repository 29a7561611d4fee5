# A command that needs a missing optional extra says which one in one line (exit status 2).
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cyncsim.replay.errors import CyncError
from cyncsim.tools._extras import require
from cyncsim.tools.cli import main


def test_require_returns_the_module_when_installed() -> None:
    assert require("json", "a test").dumps([1]) == "[1]"


@pytest.mark.parametrize(("module", "extra"), [("matplotlib", "report"), ("dpkt", "bench")])
def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch, module: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(CyncError, match=rf"pip install 'cyncsim\[{extra}\]'") as info:
        require(module, "plots")
    assert info.value.reason == "missing_extra"


def test_diff_html_without_matplotlib_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    capture = tmp_path / "c.txt"
    capture.write_text("")
    code = main(["diff", str(capture), str(capture), "--html", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "pip install 'cyncsim[report]'" in err
    assert not (tmp_path / "r.html").exists()
