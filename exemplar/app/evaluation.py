"""Plain-text rendering of an evaluation report (the numbers come from ``retrieval.evaluation``)."""

from __future__ import annotations

from exemplar.retrieval import EvalReport, Interval

__all__ = ["format_report"]


def _cell(interval: Interval) -> str:
    return f"{interval.mean:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def format_report(report: EvalReport) -> str:
    folds = ", ".join(f"{d} ({n})" for d, n in report.folds.items())
    lines = [
        f"pool {report.pool!r} version {report.version}: leave-one-domain-out, k={report.k}, "
        f"{report.queries} queries; held-out domains: {folds}",
        "",
        "| strategy | label precision@k | class among demos | majority-vote accuracy |",
        "|---|---|---|---|",
    ]
    for strategy, metrics in report.metrics.items():
        lines.append(f"| {strategy} | {_cell(metrics['precision_at_k'])} | {_cell(metrics['hit_rate'])} | "
                     f"{_cell(metrics['vote_accuracy'])} |")
    if report.differences:
        lines += ["", "| difference (paired) | label precision@k | class among demos | majority-vote accuracy |", "|---|---|---|---|"]
        for name, metrics in report.differences.items():
            lines.append(f"| {name} | {_cell(metrics['precision_at_k'])} | {_cell(metrics['hit_rate'])} | "
                         f"{_cell(metrics['vote_accuracy'])} |")
    lines += ["", "means with 95% bootstrap intervals over queries", f"({report.seconds:.1f} s)"]
    return "\n".join(lines)
