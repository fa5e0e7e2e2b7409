"""Plain-text rendering of an evaluation report (the numbers come from ``retrieval.evaluation``)."""

from __future__ import annotations

from exemplar.retrieval import EvalReport, Interval, ModelEvalReport

__all__ = ["format_model_report", "format_report"]


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


def format_model_report(report: ModelEvalReport) -> str:
    """The model's answer accuracy per arm, beside the retrieval proxies of the same queries."""
    proxies = report.proxies.metrics
    lines = [
        f"model {report.mllm!r} ({report.model}) on pool {report.pool!r} version {report.version}: "
        f"leave-one-domain-out, k={report.k}, {report.queries} queries per arm",
        "",
        "| arm | model accuracy | failed calls | label precision@k | majority-vote accuracy |",
        "|---|---|---|---|---|",
    ]
    for arm, result in report.arms.items():
        proxy = proxies.get(arm)
        precision, vote = (_cell(proxy["precision_at_k"]), _cell(proxy["vote_accuracy"])) if proxy else ("-", "-")
        lines.append(f"| {arm} | {_cell(result.accuracy)} | {result.failures} | {precision} | {vote} |")
    if report.differences:
        lines += ["", "| difference (paired) | model accuracy |", "|---|---|"]
        lines += [f"| {name} | {_cell(interval)} |" for name, interval in report.differences.items()]
    errors = [(arm, e) for arm, result in report.arms.items() for e in result.errors]
    if errors:
        lines += ["", "failed calls count as wrong answers; first errors:"]
        lines += [f"- {arm}: {e}" for arm, e in errors]
    lines += ["", "retrieval proxies on the same queries:", "", format_report(report.proxies)]
    return "\n".join(lines)
