"""The run report: a dataclass filled during a run, saved as metrics.json and a self-contained report.html."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

from graft.evaluation import plots
from graft.evaluation.metrics import HEADLINE, EvaluationResult
from graft.evaluation.thresholds import MIN_POSITIVES


@dataclass
class RunReport:
    """What a run learned and measured; every field JSON-able."""

    backbone: str
    task: str
    label_space: list[Any]
    strategy: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    test: EvaluationResult | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    # wall-clock seconds per step: in graft.json's ``timings`` and the --json summary, never in
    # metrics.json or report.html, so that identical fits give identical reports
    timings: dict[str, float] = field(default_factory=dict)
    # graft adapt: the method chosen, the evidence, every candidate on labeled target data
    adaptation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "task": self.task,
            "label_space": self.label_space,
            "strategy": self.strategy,
            "data": self.data,
            "test": self.test.to_dict() if self.test else None,
            "validation": self.validation,
            "history": self.history,
            **({"adaptation": self.adaptation} if self.adaptation else {}),
        }

    def to_html(self) -> str:
        return render_html(self)


BASELINE_NAMES = {
    "prior": "prior (chance)",
    "majority": "majority class",
    "linear_probe": "frozen linear probe",
    "scratch": "same network from scratch",
}
COMPARISON_NAMES = {
    "linear_probe": "gain over the frozen linear probe (model - probe)",
    "scratch": "transfer gain (model - same network from scratch)",
}


def comparison_sentences(test: EvaluationResult) -> list[str]:
    """One sentence per comparison and headline metric, saying whether the test set can tell."""
    from graft.evaluation.comparison import difference_sentence

    return [
        difference_sentence(COMPARISON_NAMES.get(name, f"model - {name}"), metric, diff)
        for name, by_metric in test.comparisons.items()
        for metric, diff in by_metric.items()
    ]


INTERVALS_NOTE = (
    "Intervals: Wilson for accuracy, subset accuracy and per-class precision and recall, an adjusted "
    "normal interval for balanced accuracy, the BCa bootstrap for the others (simulated coverage >= 93% "
    "at 20, 50 and 500 rows while every class has several test examples)."
)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        # learning rates and L2 strengths (5e-05, 1e-05) must not print as 0.0000
        if value != 0 and math.isfinite(value) and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3g}"
        return f"{value:.4f}"
    return _e(value)


def _table(header: list[str], rows: list[list[Any]], left: tuple[int, ...] = ()) -> str:
    """An HTML table; columns in ``left`` hold text (aligned left)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='text'>{_fmt(c)}</td>" if j in left else f"<td>{_fmt(c)}</td>"
            for j, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _confusion_html(confusion: dict[str, Any]) -> str:
    labels, matrix = confusion["labels"], confusion["matrix"]
    head = "<th>true \\ predicted</th>" + "".join(f"<th>{_e(lab)}</th>" for lab in labels)
    rows = []
    for label, row in zip(labels, matrix, strict=True):
        total = max(1, sum(row))
        cells = []
        for j, count in enumerate(row):
            share = count / total
            color = "46,125,50" if labels[j] == label else "198,40,40"
            cells.append(f'<td style="background: rgba({color},{share:.2f})">{count}</td>')
        rows.append(f"<tr><th>{_e(label)}</th>{''.join(cells)}</tr>")
    return f"<table class='cm'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _strategy_html(strategy: dict[str, Any]) -> str:
    """What shipped and why; what was tried too when that differs (e.g. LP-FT keeping its probe)."""
    kind = strategy.get("kind")
    shipped = strategy.get("shipped", kind)
    why = strategy.get("shipped_reason", strategy.get("reason", ""))
    line = f"<p><b>Strategy shipped:</b> {_e(shipped)} — {_e(why)}</p>"
    if shipped != kind:
        line += f"<p class='note'>Trained: {_e(kind)} — {_e(strategy.get('reason', ''))}</p>"
    return line


def _calibration_html(cal: dict[str, Any]) -> str:
    plot = plots.reliability_plot(cal)
    rows = [
        [f"{b['low']:.2f}-{b['high']:.2f}", b["count"], b["confidence"], b["accuracy"]]
        for b in cal.get("reliability_after", [])
    ]
    return (
        "<h2>Calibration</h2>"
        f"<p>Temperature {_fmt(cal['temperature'])} (fitted on {_e(cal['fitted_on'])}; the test rows never "
        f"touched it). Expected calibration error on the test rows: {_fmt(cal['ece_before'])} before, "
        f"{_fmt(cal['ece_after'])} after. <code>predict_proba</code> returns the calibrated probabilities; "
        "predicted classes do not change.</p>"
        + plot
        + _table(["confidence bin", "test rows", "mean confidence", "accuracy"], rows)
    )


def _abstain_html(abstain: dict[str, Any]) -> str:
    curve = abstain.get("curve", [])
    keep = [row for row in curve if round(row["coverage"] * 10) == row["coverage"] * 10] or curve[-1:]
    rows = [[f"{row['coverage']:.0%}", row["threshold"], row["accuracy"]] for row in keep]
    text = "<h2>Abstaining: coverage against accuracy</h2>"
    if "chosen" in abstain:
        chosen, test = abstain["chosen"], abstain["test"]
        lo, hi = test["precision_95"]
        text += (
            f"<p><b>--target-precision {_fmt(chosen['target_precision'])}</b>: threshold "
            f"{_fmt(chosen['threshold'])}, chosen on {chosen['validation_rows']} out-of-fold predictions "
            f"(there: coverage {chosen['validation_coverage']:.0%}, precision "
            f"{_fmt(chosen['validation_precision'])}). On the test rows it answered {test['answered']} of "
            f"{test['rows']} (coverage {test['coverage']:.0%}) with precision {_fmt(test['precision'])} "
            f"[{_fmt(lo)}, {_fmt(hi)}]; <code>predict</code> answers <code>abstain</code> for the rest.</p>"
        )
        if chosen["thin_evidence"]:
            text += (
                "<p class='note'>Few validation predictions were answered: the threshold is a rough guess</p>"
            )
    elif "note" in abstain:
        text += f"<p class='note'>{_e(abstain['note'])}</p>"
    return (
        text
        + plots.coverage_plot(abstain)
        + _table(["answer the most confident", "confidence threshold", "test accuracy"], rows)
    )


COST_RULES = {
    "cost_rule": "lowest expected cost (what predict answers)",
    "top_label": "most probable class",
    "best_constant": "one answer for every input",
}


def cost_sentence(costs: dict[str, Any]) -> str:
    """The cost rule's mean cost per prediction against the top label's, and the paired saving."""
    rules, saving = costs["rules"], costs["saving"]
    lo, hi = saving["interval_95"]
    told = not (lo <= 0 <= hi) if math.isfinite(lo) else False
    return (
        f"cost per prediction: {_fmt(rules['cost_rule']['mean_cost'])} deciding by expected cost, "
        f"{_fmt(rules['top_label']['mean_cost'])} answering the most probable class (saving "
        f"{_fmt(saving['mean'])} [{_fmt(lo)}, {_fmt(hi)}]"
        + ("" if told else "; this test set cannot tell the two rules apart")
        + f"); {_fmt(rules['best_constant']['mean_cost'])} answering "
        + f"{rules['best_constant']['answer']!r} always"
    )


def _costs_html(costs: dict[str, Any]) -> str:
    rules = [
        [COST_RULES[name], rule["mean_cost"], "[{}, {}]".format(*map(_fmt, rule["interval_95"]))]
        for name, rule in costs["rules"].items()
    ]
    labels = costs["answers"][: len(costs["matrix"])]  # the answers: every class, then abstain
    matrix = [[label, *row] for label, row in zip(labels, costs["matrix"], strict=True)]
    text = (
        f"<h2>What the errors cost</h2><p>Costs from <code>{_e(costs['source'])}</code>; mean cost per "
        f"prediction on the {costs['rows']} test rows. {_e(cost_sentence(costs))}."
        + (
            f" The cost rule passed {costs['abstained']} inputs to a person (answer <code>abstain</code>)."
            if "abstain" in costs["answers"]
            else ""
        )
        + "</p>"
        + _table(["decision rule", "mean cost per prediction", "95% interval"], rules)
        + "<h3>Cost matrix (rows: true class; columns: answer)</h3>"
        + _table(["true \\ answer", *costs["answers"]], matrix)
    )
    if costs["costliest"]:
        cells = [[c["true"], c["answer"], c["count"], c["cost_each"], c["total"]] for c in costs["costliest"]]
        text += "<h3>Where the cost rule's cost comes from</h3>" + _table(
            ["true class", "answer", "test rows", "cost each", "total"], cells
        )
    return text


def _thresholds_html(thresholds: dict[str, Any]) -> str:
    rows = [
        [row["label"], row["threshold"], row["positives"], row["f1_at_0.5"], row["f1"], row.get("kept", "")]
        for row in thresholds["labels"]
    ]
    header = ["label", "threshold", "positives (out of fold)", "F1 at 0.5", "F1 at threshold", "note"]
    return (
        "<h2>Label thresholds</h2><p>Each label is answered at or above its own threshold, chosen to "
        f"maximise its F1 on {_e(thresholds['fitted_on'])} (never the test rows); a label with fewer than "
        f"{MIN_POSITIVES} positives there keeps 0.5. <code>predict</code> applies them.</p>"
        + _table(header, rows, left=(0, 5))
    )


def _skipped_html(skipped: list[str]) -> str:
    if not skipped:
        return ""
    items = "".join(f"<li>{_e(item)}</li>" for item in skipped)
    return (
        f"<h3>Left out with --skip-bad ({len(skipped)})</h3>"
        f"<p class='note'>These rows or files were not used for training or evaluation.</p><ul>{items}</ul>"
    )


def leakage_sentences(leakage: dict[str, Any] | None) -> list[str]:
    """The leakage check in words: one sentence per held-out part."""
    out = []
    for name, found in (leakage or {}).items():
        text = f"{found['rows']} of the {found['of']} {name} examples are copies of a training example"
        if found.get("kept_together"):
            text += (
                f" ({found['kept_together']} rows that copy another row, after normalising case, punctuation "
                "and spacing or comparing file bytes, were kept on one side of the split)"
            )
        elif found["rows"]:
            text += f", e.g. {found['examples'][0]!r}: the {name} score is optimistic"
        out.append(text + ".")
    return out


def render_html(report: RunReport) -> str:
    """The report as one self-contained HTML page (plots inline, nothing fetched)."""
    parts = [f"<h1>graft report: {_e(report.task)} on {_e(report.backbone)}</h1>"]
    if report.strategy:
        parts.append(_strategy_html(report.strategy))
    if report.data:
        parts.append(_data_html(report.data))
    if report.adaptation:
        parts.append(adaptation_html(report.adaptation))
    if report.test is not None:
        parts.append(_test_html(report.test))
    if report.validation:
        rows = [[k, v] for k, v in report.validation.items() if not isinstance(v, dict | list)]
        parts.append("<h2>Validation (model choice)</h2>" + _table(["", ""], rows))
    if report.history:
        keys = list(report.history[0])
        parts.append(
            "<h2>Training history</h2>" + plots.history_plot(report.history)
            + _table(keys, [[h[k] for k in keys] for h in report.history])
        )  # fmt: skip
    if report.timings:
        parts.append(
            "<p class='note'>How long each step took is in the bundle's graft.json (<code>timings</code>), "
            "not in this report: two identical fits give identical reports.</p>"
        )
    return _page("".join(parts))


def adaptation_rows(record: dict[str, Any], part: str = "test") -> list[list[Any]]:
    """One row per candidate on the labeled target ``test`` rows (or the ``evidence`` rows it was
    chosen on): method, metric, interval, difference with none and its paired interval."""
    rows = []
    for name, row in (record.get(part) or {}).get("scores", {}).items():
        if "value" not in row:  # the unsupervised criterion: no labeled scores
            continue
        diff = row.get("vs_none")
        lo, hi = row["interval_95"] or [math.nan, math.nan]
        label = name + (" (chosen)" if name == record["method"] else "")
        rows.append([
            label, row["value"], f"[{_fmt(lo)}, {_fmt(hi)}]",
            "" if diff is None else f"{diff['difference']:+.4f}",
            "" if diff is None else "[{:+.4f}, {:+.4f}]".format(*diff["interval_95"]),
        ])  # fmt: skip
    return rows


def adaptation_text(record: dict[str, Any]) -> str:
    """The choice, every method on the labeled target test rows, and what was not run, as text."""
    lines = [f"chosen: {record['method']} ({record['evidence']['reason']})"]
    if record.get("test"):
        metric = record["test"]["metric"]
        lines += [
            "",
            f"{'method':<24}{metric:>10}  {'95% interval':<18}{'minus none':>11}  paired 95% interval",
        ]
        lines += [f"{r[0]:<24}{r[1]:>10.4f}  {r[2]:<18}{r[3]:>11}  {r[4]}" for r in adaptation_rows(record)]
    lines += [f"not run: {name}: {why}" for name, why in record.get("skipped", {}).items()]
    lines.append("seconds: " + ", ".join(f"{name} {s:.1f}" for name, s in record.get("seconds", {}).items()))
    return "\n".join(lines)


def adaptation_html(record: dict[str, Any]) -> str:
    evidence = record["evidence"]
    text = (
        f"<h2>Adaptation: {_e(record['method'])}</h2><p>{_e(evidence['reason'])}.</p>"
        f"<p class='note'>{record['target_inputs']} unlabeled target inputs; chosen on "
        f"{_e(evidence.get('chosen_on', 'nothing'))}; source data: "
        f"{_e(record.get('source_data') or 'not available')}</p>"
    )
    for part, title in (("evidence", evidence.get("chosen_on", "")), ("test", "labeled target test rows")):
        rows = adaptation_rows(record, part)
        if rows:
            metric = record[part]["metric"]
            head = ["method", metric, "95% interval", "minus none", "paired 95% interval"]
            where = f"{record['test']['rows']} {title}" if part == "test" else f"the {title} (choice)"
            text += f"<h3>Every method on {_e(where)}</h3>" + _table(head, rows, left=(0,))
    if record.get("skipped"):
        text += _table(["not run", "why"], [[k, v] for k, v in record["skipped"].items()], left=(0, 1))
    return text


def _page(body: str) -> str:
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th{background:#f4f4f4}.note{color:#666;font-size:90%}"
        "img.plot{display:block;margin:0.5em 0;max-width:100%}td.text{text-align:left}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>graft report</title>"
        f"<style>{style}</style></head><body>{body}</body></html>\n"
    )


def _data_html(data: dict[str, Any]) -> str:
    rows = [[k, v] for k, v in data.items() if not isinstance(v, dict | list)]
    text = "<h2>Data</h2>"
    if data.get("split"):
        text += f"<p><b>Protocol:</b> {_e(data['split'])}.</p>"
    text += _table(["", ""], rows)
    leakage = leakage_sentences(data.get("leakage"))
    if leakage:
        text += "<p><b>Leakage check:</b> " + _e(" ".join(leakage)) + "</p>"
    skipped = {k: v for k, v in (data.get("baselines") or {}).items() if k != "level"}
    if skipped:
        text += (
            "<p class='note'>Baselines: " + _e("; ".join(f"{k}: {v}" for k, v in skipped.items())) + "</p>"
        )
    return text + _skipped_html(data.get("skipped") or [])


def _test_html(test: EvaluationResult) -> str:
    bases = [b for b in BASELINE_NAMES if b in test.baselines]
    rows = []
    for name, value in test.metrics.items():
        interval = test.intervals.get(name)
        ci = f"[{_fmt(interval[0])}, {_fmt(interval[1])}]" if interval else ""
        rows.append(
            [name + (" *" if name in HEADLINE[test.task] else ""), value, ci]
            + [test.baselines[b].get(name, "") for b in bases]
        )
    parts = [
        (
            f"<h2>Held-out {_e(test.split)} set ({test.n} examples)</h2>"
            if "cross-validated" not in test.split
            else f"<h2>{_e(test.split)} estimate ({test.n} examples, each scored by a model that never "
            "saw it)</h2>"
        )
        + _table(["metric", "model", "95% interval"] + [BASELINE_NAMES[b] for b in bases], rows)
        + "<p class='note'>* headline metrics. The test split never touched training or model choice. "
        + INTERVALS_NOTE
        + "</p>"
    ]
    parts += [f"<p class='note'>{_e(note)}</p>" for note in test.notes]
    if test.comparisons:
        items = "".join(f"<li>{_e(line)}</li>" for line in comparison_sentences(test))
        parts.append(
            "<h2>What transfer bought</h2>" + _models_plot(test) + "<ul>" + items + "</ul><p class='note'>"
            "Paired 95% intervals: both models scored on the same test rows, resampled together.</p>"
        )
    if test.calibration:
        parts.append(_calibration_html(test.calibration))
    if test.abstain:
        parts.append(_abstain_html(test.abstain))
    if test.costs:
        parts.append(_costs_html(test.costs))
    if test.thresholds:
        parts.append(_thresholds_html(test.thresholds))
    if test.per_class:
        rows = [[c, v["precision"], v["recall"], v["f1"], v["support"]] for c, v in test.per_class.items()]
        parts.append("<h2>Per class</h2>" + _table(["class", "precision", "recall", "f1", "support"], rows))
    if test.confusion:
        parts.append(
            "<h2>Confusion matrix</h2>"
            + plots.confusion_plot(test.confusion)
            + _confusion_html(test.confusion)
        )
    if test.errors:
        parts.append(_errors_html(test.errors))
    return "".join(parts)


def _models_plot(test: EvaluationResult) -> str:
    metric = HEADLINE[test.task][0]
    rows = [("model", test.metrics.get(metric), test.intervals.get(metric))]
    for name in BASELINE_NAMES:
        if name in test.baselines and name != "majority":
            rows.append(
                (
                    BASELINE_NAMES[name],
                    test.baselines[name].get(metric),
                    test.baseline_intervals.get(name, {}).get(metric),
                )
            )
    return plots.models_plot(metric, rows)


def _errors_html(errors: dict[str, Any]) -> str:
    text = ""
    pairs = errors.get("confused_pairs") or []
    if pairs:
        rows = [
            [
                p["true"],
                p["predicted"],
                p["count"],
                f"{p['share_of_true_class']:.0%}",
                " | ".join(p["examples"]),
            ]
            for p in pairs
        ]
        text += "<h2>Most-confused classes</h2>" + _table(
            ["true", "predicted as", "test rows", "share of the true class", "examples"], rows, left=(4,)
        )
    hardest = errors.get("hardest") or []
    if hardest:
        rows = [[h["input"], h["true"], h["predicted"], h["p_true"], h["confidence"]] for h in hardest]
        text += "<h2>Hardest test examples</h2>" + _table(
            ["input", "true", "predicted", "p(true)", "confidence"], rows, left=(0,)
        )
    return text
