# The HTML report of `cyncsim validate --html`: one self-contained file.
#
# Strategy: the page style, the base64 PNG plots and the "plots rendered" script of the diff
# report (tools/_diff_report.py); per request kind one matplotlib figure (object API, Agg):
# the band the simulated runs' latency CDFs span (their pointwise 5th to 95th percentile on
# the pooled values, shaded), each run's CDF as a thin line, and the real held-out CDF over
# them.  The table below repeats the text output (* on a real value outside its envelope).
from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from cyncsim.replay.conformance.predictive import ENVELOPE, STATS, Envelope
from cyncsim.replay.conformance.validation import KindResult, ValidationReport
from cyncsim.tools._diff_report import _CSS, _SCRIPT, _esc, cdf_png, write_page

__all__ = ["kind_plot_png", "render_html", "write_html"]

_REAL = "#d62728"
_SIM = "#1f77b4"


def _ecdf_at(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.sort(values), grid, side="right") / len(values)


def kind_plot_png(kind: KindResult) -> bytes:
    """The real CDF over the band of simulated CDFs, as PNG bytes."""
    from matplotlib.figure import Figure

    c = kind.check
    fig = Figure(figsize=(4.2, 3.0), dpi=90)
    ax = fig.subplots()
    runs = [np.asarray(r, dtype=float) * 1000 for r in c.runs if r]
    real = np.asarray(c.real, dtype=float) * 1000
    values = np.concatenate([*runs, real]) if runs or len(real) else np.zeros(1)
    grid = np.unique(values)
    if runs:
        cdfs = np.vstack([_ecdf_at(r, grid) for r in runs])
        lo, hi = np.percentile(cdfs, ENVELOPE, axis=0)
        ax.fill_between(grid, lo, hi, step="post", color=_SIM, alpha=0.25,
                        label=f"simulated runs 5-95% (N={len(runs)})")  # fmt: skip
        for row in cdfs:
            ax.step(grid, row, where="post", color=_SIM, linewidth=0.5, alpha=0.6)
    if len(real):
        ax.step(grid, _ecdf_at(real, grid), where="post", color=_REAL, linewidth=2.0,
                label=f"real held-out (n={len(real)})")  # fmt: skip
    title = f"{kind.label} [{kind.key[0]}, {kind.key[1]}] {kind.verdict}"
    return cdf_png(fig, ax, grid[grid > 0].tolist(), "latency (ms)", title)


def _env(e: Envelope) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.1f}"

    mark = "*" if e.inside is False else ""
    return f"{ms(e.real)}{mark} [{ms(e.low)}&ndash;{ms(e.high)}]"


def _table(report: ValidationReport) -> str:
    head = (
        "<tr><th>kind</th><th>answered by</th><th>variant</th><th>n real</th><th>n train</th>"
        + "".join(f"<th>{s} ms: real [runs 5&ndash;95%]</th>" for s in STATS)
        + "<th>KS real</th><th>p-value</th><th>verdict</th><th>why</th><th>structure</th></tr>"
    )
    rows = []
    cls = {"implausible": "fail", "insufficient": "insufficient", "plausible": "pass"}
    for k in report.kinds:
        c = k.check
        cells = "".join(f"<td class=num>{_env(c.envelopes[s])}</td>" for s in STATS)
        rows.append(
            f'<tr class="{cls[k.verdict]}"><td>{_esc(k.label)}</td><td>{_esc(k.key[1])}</td>'
            f"<td>{_esc(k.key[0])}</td><td class=num>{c.n_real}</td>"
            f"<td class=num>{c.n_train or 0}</td>{cells}"
            f"<td class=num>{'-' if c.ks_real is None else f'{c.ks_real:.2f}'}</td>"
            f"<td class=num>{'-' if c.p_value is None else f'{c.p_value:.2f}'}</td>"
            f"<td>{_esc(k.verdict)}</td><td>{_esc(c.reason)}</td>"
            f"<td>{_esc(k.structure)}</td></tr>"
        )
    return f'<table id="kinds">{head}{"".join(rows)}</table>'


def render_html(report: ValidationReport) -> str:
    plots = []
    for k in report.kinds:
        png = base64.b64encode(kind_plot_png(k)).decode("ascii")
        plots.append(
            f'<figure><img class="plot" width="378" height="270" alt="CDF {_esc(k.label)}" '
            f'src="data:image/png;base64,{png}"><figcaption>{_esc(k.label)} &middot; '
            f"{_esc(k.verdict)}</figcaption></figure>"
        )
    verdict = "conformant" if report.plausible else "nonconformant"  # the diff page's colours
    notes = "".join(f"<li>{_esc(n)}</li>" for n in report.notes)
    split = (
        f"time split at {report.split:g} of each capture"
        if report.split is not None
        else f"held out: {_esc(', '.join(Path(s).name for s in report.held_out))}"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>cyncsim validate: {_esc(report.verdict)}</title>
<style>{_CSS}</style></head>
<body data-verdict="{_esc(report.verdict)}">
<h1>cyncsim validate
<span class="verdict {verdict}">{_esc(report.verdict.upper())}</span></h1>
<p class="meta">training: {_esc(", ".join(Path(s).name for s in report.training))}
({split})<br>
{report.runs} runs per direction, seed {report.seed}; runtime {report.runtime_s:.0f} s<br>
plausible: KS rank p &ge; 0.05; * marks a real value outside the runs' 5&ndash;95% envelope
(information, not judged)</p>
<ul class="meta">{notes}</ul>
<h2>Real held-out CDF over the simulated runs</h2>
<div class="plots" id="plots">{"".join(plots) or "<p>No request kind held out.</p>"}</div>
<h2>Per request kind</h2>
{_table(report)}
<script>{_SCRIPT}</script>
</body></html>
"""


def write_html(report: ValidationReport, path: str | Path) -> None:
    write_page(render_html(report), path)
