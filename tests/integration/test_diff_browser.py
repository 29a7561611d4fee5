# The `cyncsim diff --html` report opened in a real headless browser (Chromium from Debian's
# packages): the plots must decode and render, and the page must not be blank.
#
# Set CYNCSIM_DIFF_SCREENSHOT=docs/diff-report.png to refresh the screenshot kept in docs/.
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cyncsim.replay.capture import read_capture
from cyncsim.tools.cli import main
from tests.support import capture_path, decoded_flows, indices, write_text_log

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
REF_RGB = (0x1F, 0x77, 0xB4)  # tools/_diff_report.py colours
CAND_RGB = (0xD6, 0x27, 0x28)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} not installed (apt-get install -y chromium) - cannot open the report",
)


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A report on the local capture with every latency x5 and one 0x7B echo defect."""
    capture = capture_path("capture_20251107_152132.txt")
    decoded = read_capture(capture)
    flows = decoded_flows(decoded)
    bridge = max(range(len(flows)), key=lambda n: len(flows[n]))
    t0 = min(ts for flow in flows for ts, _, _ in flow)
    flows = [[(t0 + 5 * (ts - t0), s, raw) for ts, s, raw in flow] for flow in flows]
    i = indices(flows[bridge], "0x7b", "device")[5]
    ts, s, raw = flows[bridge][i]
    flows[bridge][i] = (ts, s, raw[:10] + b"\x42" + raw[11:])
    tmp = tmp_path_factory.mktemp("report")
    cand = tmp / "slow-and-wrong-echo.txt"
    write_text_log(cand, flows)
    html = tmp / "report.html"
    out = io.StringIO()
    code = main(["diff", "--no-progress", str(capture), str(cand), "--html", str(html)], out=out)
    assert code == 1 and html.is_file()
    return html, out.getvalue()


def test_report_renders_its_plots_in_headless_chromium(
    report_html: tuple[Path, str], tmp_path: Path
) -> None:
    html, _ = report_html
    page = html.read_text(encoding="utf-8")
    n_plots = len(re.findall(r'<img class="plot"', page))
    assert n_plots >= 10
    dom = chromium(tmp_path / "profile-dom", "--dump-dom", html.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = re.findall(r'<img class="plot"[^>]*data-rendered="(\d+)x(\d+)"', dom.stdout)
    assert len(rendered) == n_plots, "some plot images did not decode in the browser"
    assert all((int(w), int(h)) == (378, 270) for w, h in rendered)
    assert f'data-plots-rendered="{n_plots}"' in dom.stdout
    assert 'data-verdict="nonconformant"' in dom.stdout
    assert "echo_mismatch" in dom.stdout and "<mark>42</mark>" in dom.stdout
    assert "0xd3 → 0xd8" in dom.stdout or "0xd3 -&gt; 0xd8" in dom.stdout


def test_screenshot_is_not_blank_and_shows_both_curves(
    report_html: tuple[Path, str], tmp_path: Path
) -> None:
    html, _ = report_html
    shot = tmp_path / "report.png"
    res = chromium(
        tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000", html.as_uri()
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    with Image.open(shot) as img:
        assert img.size == (1280, 2000)
        pixels = np.asarray(img.convert("RGB"), dtype=np.int16).reshape(-1, 3)
    ink = int((pixels.min(axis=1) < 235).sum())
    assert ink / len(pixels) > 0.05, "the screenshot is (nearly) blank"

    def near(colour: tuple[int, int, int]) -> int:
        return int((np.abs(pixels - np.array(colour)).max(axis=1) <= 40).sum())

    assert near(REF_RGB) > 500, "no reference curve visible"
    assert near(CAND_RGB) > 500, "no candidate curve visible"
    target = os.environ.get("CYNCSIM_DIFF_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
