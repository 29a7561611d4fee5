# The pure findings renderer (replay.conformance.render): the findings section `cyncsim diff`
# prints, and the assertion-style failure message of a pytest replay item.
from __future__ import annotations

from cyncsim.replay.conformance import ConformanceFinding, DiffReport, Severity, Tolerance
from cyncsim.replay.conformance.render import format_ts, render_failure, render_findings


def _finding(
    kind: str, severity: Severity, index: int, offsets: tuple[int, ...] = ()
) -> ConformanceFinding:
    return ConformanceFinding(
        kind,
        severity,
        "flow-a",
        index,
        0.0,
        f"{kind} at {index}",
        expected="00 01 00",
        actual="ff fe ff",
        packet_hex="88 00 00 00 03 ff fe ff",
        example_hex="88 00 00 00 03 00 01 00",
        offsets=offsets,
    )


def _report(*findings: ConformanceFinding) -> DiffReport:
    return DiffReport(["ref"], ["cand"], Tolerance(), findings=list(findings))


def test_findings_section_groups_by_kind_and_caps() -> None:
    report = _report(*(_finding("echo_mismatch", "error", i, (5, 6, 7)) for i in range(5)))
    text = render_findings(report, max_findings=2)
    lines = text.splitlines()
    assert lines[0] == "findings"
    assert lines[1].startswith("echo_mismatch (5, error): ")
    assert "  flow-a packet 0 at 1970-01-01T00:00:00.000000: echo_mismatch at 0" in lines
    assert "    packet:    88 00 00 00 03 [ff] [fe] [ff]" in lines
    assert "    reference: 88 00 00 00 03 [00] [01] [00]" in lines
    assert lines[-1] == "  ... 3 more (all in --json)"
    assert render_findings(_report()) == "findings: none\n"


def test_failure_message_lists_errors_first_and_counts_warnings() -> None:
    report = _report(
        _finding("unknown_kind", "warning", 1),
        _finding("unanswered", "error", 7),
        _finding("echo_mismatch", "error", 9, (5,)),
    )
    text = render_failure(report, max_findings=1)
    lines = text.splitlines()
    assert lines[0] == "replay nonconformant: 1 unanswered, 1 echo_mismatch"
    assert "unknown_kind" not in text.split("(and")[0]
    assert "  flow-a packet 7 at 1970-01-01T00:00:00.000000: unanswered at 7" in lines
    assert "    packet:    88 00 00 00 03 [ff] fe ff" in lines
    assert lines[-1] == "(and 1 warnings)"


def test_failure_message_of_a_conformant_report_is_one_line() -> None:
    assert render_failure(_report(_finding("unknown_kind", "warning", 1))) == (
        "replay conformant: no error findings (1 warnings)\n"
    )
    assert format_ts(None) == "-"
