"""Evaluation: streaming metrics (perplexity, accuracy, ECE, KL/agreement to the teacher), the evaluation
loop over batches without (B, T, V) logits, and the report (tables, reliability diagrams, ``report.md``)."""

from ekd.eval.evaluate import evaluate, evaluate_sets, model_body, output_head
from ekd.eval.metrics import StreamingMetrics, expected_calibration_error
from ekd.eval.report import plot_metric_bars, plot_reliability, results_table, write_report

__all__ = [
    "StreamingMetrics",
    "evaluate",
    "evaluate_sets",
    "expected_calibration_error",
    "model_body",
    "output_head",
    "plot_metric_bars",
    "plot_reliability",
    "results_table",
    "write_report",
]
