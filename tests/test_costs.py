"""--costs: reading a cost matrix, the cost-minimising rule, the report, and a bundle that decides by it."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import graft
from graft.config import RunConfig
from graft.errors import ConfigError, DataError
from graft.evaluation.costs import Costs, cost_report, decide, expected_costs, read_costs
from tests.conftest import FILLER, make_sentiment

SPAM = Costs(labels=["ham", "spam"], answers=["ham", "spam"], matrix=np.array([[0.0, 10.0], [1.0, 0.0]]))


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_csv_cost_matrix_is_read_in_label_space_order_with_an_abstain_column(tmp_path):
    path = write(tmp_path, "costs.csv", "true\\answer,spam,abstain,ham\nspam,0,1,1\nham,10,1,0\n")
    costs = read_costs(path, ["ham", "spam"])
    assert costs.labels == ["ham", "spam"] and costs.answers == ["ham", "spam", "abstain"]
    np.testing.assert_array_equal(costs.matrix, [[0, 10, 1], [1, 0, 1]])
    assert costs.abstains and Costs.from_dict(costs.to_dict()).answers == costs.answers


def test_tsv_and_json_cost_matrices_and_integer_labels(tmp_path):
    tsv = read_costs(write(tmp_path, "c.tsv", "\t0\t1\n0\t0\t2\n1\t3\t0\n"), [0, 1])
    np.testing.assert_array_equal(tsv.matrix, [[0, 2], [3, 0]])
    js = read_costs(
        write(tmp_path, "c.json", json.dumps({"ham": {"spam": 10}, "spam": {"ham": 1}})), ["ham", "spam"]
    )
    np.testing.assert_array_equal(js.matrix, [[0, 10], [1, 0]])  # the diagonal defaults to 0 in JSON


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x,ham,spam\nham,0,10\nsapm,1,0\n", "line 3: 'sapm' is not a class"),
        ("x,ham,spam\nham,0,ten\nspam,1,0\n", "line 2, column 'spam': 'ten' is not a cost"),
        ("x,ham,spam\nham,0,10\n", r"no cost given for \(true class, answer\) \(spam, ham\), \(spam, spam\)"),
        ("x,ham,spam\nham,0,10\nham,1,0\n", "line 3: true class 'ham' has a second row"),
        ("x,ham,spam\nham,0\nspam,1,0\n", "line 2: 1 costs for 2 answers"),
        ("x,ham,spam,ham\nham,0,1,1\nspam,1,0,0\n", "an answer is named twice"),
        ("x,ham,spam\nham,0,inf\nspam,1,0\n", "'inf' is not a cost"),
        # issue 19: a minus sign flipped decisions unnoticed
        (
            "x,ham,spam\nham,0,10\nspam,-1,0\n",
            r"line 3, column 'ham': the cost '-1' is negative; costs must be >= 0",
        ),
    ],
)
def test_a_wrong_cost_file_names_the_line_and_cell(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_costs(write(tmp_path, "costs.csv", text), ["ham", "spam"])


def test_a_negative_json_cost_is_refused_and_class_names_are_read_as_labels_are(tmp_path):
    with pytest.raises(DataError, match=r"row 'ham', answer 'spam': the cost -2 is negative"):
        read_costs(write(tmp_path, "c.json", json.dumps({"ham": {"spam": -2}})), ["ham", "spam"])
    costs = read_costs(write(tmp_path, "c.csv", "x,0.0,1.0\n0.0,0,2\n1.0,3,0\n"), [0, 1])
    np.testing.assert_array_equal(costs.matrix, [[0, 2], [3, 0]])


def test_missing_files_bad_json_and_a_class_named_abstain_are_refused(tmp_path):
    with pytest.raises(DataError, match="no such cost file"):
        read_costs(tmp_path / "nope.csv", ["a", "b"])
    with pytest.raises(DataError, match="not valid JSON"):
        read_costs(write(tmp_path, "c.json", "{"), ["a", "b"])
    with pytest.raises(ConfigError, match="class is named 'abstain'"):
        read_costs(write(tmp_path, "c.csv", "x,a,abstain\na,0,1\nabstain,1,0\n"), ["a", "abstain"])


def test_the_cost_rule_answers_spam_only_above_ten_elevenths():
    # answering ham costs 1 * p(spam) in expectation, answering spam 10 * p(ham)
    proba = np.array([[0.2, 0.8], [0.09, 0.91], [0.095, 0.905]])
    np.testing.assert_allclose(expected_costs(proba, SPAM), [[0.8, 2.0], [0.91, 0.9], [0.905, 0.95]])
    assert decide(proba, SPAM).tolist() == [0, 1, 0]


def test_abstaining_is_chosen_where_it_is_cheapest_and_can_be_switched_off():
    costs = Costs(["a", "b"], ["a", "b", "abstain"], np.array([[0.0, 1.0, 0.3], [1.0, 0.0, 0.3]]))
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    assert decide(proba, costs).tolist() == [0, 2, 1]  # 0.4 to answer a at 0.6/0.4, 0.3 to abstain
    assert decide(proba, costs, abstain=False).tolist() == [0, 0, 1]


def test_cost_report_by_hand():
    proba = np.array([[0.2, 0.8], [0.6, 0.4], [0.05, 0.95], [0.7, 0.3]])
    targets = np.array([0, 0, 1, 1])
    report = cost_report(SPAM, proba, targets, prior=np.array([0.87, 0.13]))
    rules = report["rules"]
    # top label: spam, ham, spam, ham -> 10 + 0 + 0 + 1; cost rule: ham, ham, spam, ham -> 0 + 0 + 0 + 1
    assert rules["top_label"]["mean_cost"] == pytest.approx(11 / 4)
    assert rules["cost_rule"]["mean_cost"] == pytest.approx(1 / 4)
    assert report["saving"]["mean"] == pytest.approx(10 / 4)
    # one answer for all: ham costs 0.13 in expectation, spam 8.7 -> ham; on these rows 2 spams missed
    assert rules["best_constant"]["answer"] == "ham" and rules["best_constant"]["mean_cost"] == pytest.approx(
        0.5
    )
    lo, hi = rules["top_label"]["interval_95"]
    assert lo <= 11 / 4 <= hi
    assert report["costliest"][0] == {
        "true": "spam",
        "answer": "ham",
        "count": 1,
        "cost_each": 1.0,
        "total": 1.0,
    }


def _sentiment_with_uncertain_rows() -> tuple[list[str], list[str]]:
    rows = make_sentiment(60)
    rows += [
        (" ".join(random.Random(i).sample(FILLER, 4)), "positive" if i % 2 else "negative") for i in range(40)
    ]
    return [t for t, _ in rows], [y for _, y in rows]


def test_a_bundle_fitted_with_costs_decides_by_expected_cost(tiny_source, tmp_path):
    costs = write(tmp_path, "costs.csv", "true,negative,positive,abstain\nnegative,0,5,1\npositive,1,0,1\n")
    texts, labels = _sentiment_with_uncertain_rows()
    cfg = RunConfig(evaluation=graft.EvalConfig(costs=str(costs)))
    model = graft.fit(texts, labels=labels, backbone=tiny_source, strategy="linear_probe", progress=False,
                      config=cfg, out=tmp_path / "r")  # fmt: skip
    report = model.report_.test.costs
    assert set(report["rules"]) == {"top_label", "cost_rule", "best_constant"}
    rules = report["rules"]
    saving = rules["top_label"]["mean_cost"] - rules["cost_rule"]["mean_cost"]
    assert report["saving"]["mean"] == pytest.approx(saving) and report["rows"] == model.report_.test.n
    loaded = graft.load(tmp_path / "r")
    proba = loaded.predict_proba(texts)
    expected = proba @ np.array([[0, 5, 1], [1, 0, 1]])
    answers = loaded.predict(texts)
    assert answers == [["negative", "positive", "abstain"][j] for j in expected.argmin(1)]
    assert "abstain" not in loaded.predict(texts, abstain=False)
    assert "What the errors cost" in (tmp_path / "r" / "bundle" / "report.html").read_text()
    # a bundle is evaluated with its own matrix, or with another one given for the evaluation only
    assert loaded.evaluate(list(zip(texts, labels, strict=True))).costs["source"] == str(costs)
    other = write(
        tmp_path, "other.json", json.dumps({"negative": {"positive": 1}, "positive": {"negative": 1}})
    )
    result = loaded.evaluate(list(zip(texts, labels, strict=True)), costs=other)
    assert result.costs["rules"]["top_label"]["mean_cost"] == pytest.approx(1 - result.metrics["accuracy"])


def test_costs_are_checked_before_any_work(tiny_source, tmp_path):
    bad = write(tmp_path, "costs.csv", "x,negative,positive\nnegative,0,1\n")
    texts, labels = _sentiment_with_uncertain_rows()
    cfg = RunConfig(evaluation=graft.EvalConfig(costs=str(bad)))
    with pytest.raises(DataError, match="no cost given"):
        graft.fit(texts, labels=labels, backbone=tiny_source, progress=False, config=cfg, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="use one"):
        graft.EvalConfig(costs=str(bad), target_precision=0.9)
    with pytest.raises(ConfigError, match="--costs applies to multiclass"):
        values = [float(i) for i in range(len(texts))]
        graft.fit(texts, labels=values, task="regression", backbone=tiny_source, progress=False, config=cfg)
