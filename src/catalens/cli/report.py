"""How the CLI prints evaluation reports (Rich tables): kept out of the command modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from catalens.eval.evaluate import EvalReport
from catalens.eval.feedback_curve import CurvePoint


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_eval(out: Console, report: EvalReport) -> None:
    """The metrics, latency, calibrated verdicts, groups and skipped queries of one report."""
    table = Table("metric", "value")
    for key, value in report.metrics.items():
        table.add_row(key, _number(value))
    for key, value in report.latency_ms.items():
        table.add_row(f"latency {key} (ms)", f"{value:.1f}")
    verdicts = report.verdicts
    if verdicts:
        outside = verdicts["out_of_catalog"]
        table.add_row("match precision", _number(verdicts["match_precision"]))
        table.add_row("match recall", _number(verdicts["match_recall"]))
        table.add_row("out-of-catalog queries", str(outside["queries"]))
        table.add_row("out-of-catalog false matches", _number(outside["false_match_rate"]))
        if not verdicts["calibrated"]:
            table.add_row("verdicts", "none: the collection is not calibrated")
    out.print(table)
    if report.groups:
        groups = Table(report.group_by or "group", "queries", "recall@1", "recall@5", "mrr")
        for name, m in report.groups.items():
            groups.add_row(
                name,
                str(int(m["queries"])),
                f"{m['recall@1']:.3f}",
                f"{m['recall@5']:.3f}",
                f"{m['mrr']:.3f}",
            )
        out.print(groups)
    if report.skipped:
        out.print(f"{len(report.skipped)} queries skipped, e.g. {report.skipped[0]}")


def print_curve(out: Console, points: Sequence[CurvePoint]) -> None:
    """One row per K of a feedback curve."""
    table = Table(
        "K",
        "fed",
        "recall@1",
        "recall@5",
        "mrr",
        "match precision",
        "match recall",
        "ooc false matches",
    )
    for point in points:
        m, v = point.report.metrics, point.report.verdicts
        table.add_row(
            str(point.k),
            str(point.fed),
            _number(m.get("recall@1"), 3),
            _number(m.get("recall@5"), 3),
            _number(m.get("mrr"), 3),
            _number(v.get("match_precision"), 3),
            _number(v.get("match_recall"), 3),
            _number(v.get("out_of_catalog", {}).get("false_match_rate"), 3),
        )
    out.print(table)
