"""The Python API across tasks: multiclass, multilabel, regression; inputs checked against the contract."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

import graft
from graft.config import RunConfig, StrategyConfig, TrainConfig
from graft.errors import ContractError, DataError
from tests.conftest import FILLER, NEGATIVE, POSITIVE, make_sentiment


def test_linear_probe_from_lists(tiny_source):
    rows = make_sentiment(60)
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    model = graft.fit(texts, labels=labels, backbone=tiny_source, strategy="linear_probe", progress=False)
    report = model.report_
    assert report.strategy["kind"] == "linear_probe" and report.strategy["frozen_backbone"]
    assert report.test.metrics["accuracy"] >= 0.85
    assert report.test.baselines["majority"]["accuracy"] <= 0.6
    assert model.predict(["great film", "awful film"]) == ["positive", "negative"]
    assert model.predict_proba(["great film"]).shape == (1, 2)


def test_auto_explains_its_choice(tiny_source, sentiment_csv):
    quick = RunConfig(strategy=StrategyConfig(contrastive_steps=8))  # auto also tries contrastive tuning
    model = graft.fit(sentiment_csv, backbone=tiny_source, config=quick, progress=False)
    strategy = model.report_.strategy
    assert strategy["kind"] in ("linear_probe", "contrastive") and strategy["requested"] == "auto"
    assert "cross-validation" in strategy["reason"] and "too few to fine-tune" in strategy["reason"]
    assert {row["strategy"] for row in strategy["candidates"]} >= {"linear_probe", "full"}


def test_multilabel_end_to_end(tiny_source):
    rng = random.Random(0)
    rows = []
    for _ in range(120):
        pos, neg = rng.random() < 0.5, rng.random() < 0.5
        words = (
            rng.sample(FILLER, 3)
            + ([rng.choice(POSITIVE)] if pos else [])
            + ([rng.choice(NEGATIVE)] if neg else [])
        )
        rng.shuffle(words)
        rows.append(
            {"text": " ".join(words), "tags": "|".join([t for t, on in (("pos", pos), ("neg", neg)) if on])}
        )
    df = pd.DataFrame(rows)
    df.loc[df.tags == "", "tags"] = "none"
    cfg = RunConfig().replace("data", label_sep="|")
    model = graft.fit(df, backbone=tiny_source, strategy="linear_probe", config=cfg, progress=False)
    assert model.task == "multilabel" and set(model.label_space) == {"neg", "none", "pos"}
    assert model.report_.test.metrics["micro_f1"] >= 0.7
    preds = model.predict(["great awful movie"])
    assert isinstance(preds[0], list)
    # each label's threshold, chosen on the out-of-fold outputs, ships and decides
    chosen = model.report_.test.thresholds
    assert [row["label"] for row in chosen["labels"]] == list(model.label_space)
    assert chosen["thresholds"] == model.manifest_["thresholds"] and "out-of-fold" in chosen["fitted_on"]
    assert all(row["f1"] >= row["f1_at_0.5"] - 1e-9 for row in chosen["labels"])  # on those outputs
    proba = model.predict_proba(df.text.tolist())
    cut = np.asarray(chosen["thresholds"])
    expected = [[model.label_space[j] for j in np.flatnonzero(row >= cut)] for row in proba]
    assert model.predict(df.text.tolist()) == expected


def test_regression_end_to_end(tiny_source):
    rng = random.Random(1)
    texts, values = [], []
    for _ in range(150):
        n = rng.randint(0, 3)
        texts.append(" ".join(rng.sample(FILLER, 2) + ["great"] * n + ["movie"]))
        values.append(n * 1.5 + 0.25 + rng.random() * 0.1)
    model = graft.fit(texts, labels=values, backbone=tiny_source, strategy="linear_probe", progress=False)
    assert model.task == "regression"
    result = model.report_.test
    assert result.metrics["r2"] > 0.5 and result.metrics["mae"] < result.baselines["majority"]["mae"]
    with pytest.raises(ContractError, match="no class probabilities"):
        model.predict_proba(["great movie"])
    assert isinstance(model.predict(["great great movie"])[0], float)


def test_separate_val_and_test_files(tiny_source, tmp_path):
    import csv

    for name, seed in (("train", 0), ("val", 1), ("test", 2)):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(make_sentiment(20, seed))
    model = graft.fit(tmp_path / "train.csv", backbone=tiny_source, strategy="linear_probe",
                      val=tmp_path / "val.csv", test=tmp_path / "test.csv", progress=False)  # fmt: skip
    data = model.report_.data
    assert (data["train"], data["validation"], data["test"]) == (40, 40, 40)


def test_evaluate_refuses_labels_outside_the_label_space(tiny_source, sentiment_csv, tmp_path):
    model = graft.fit(sentiment_csv, backbone=tiny_source, strategy="linear_probe", progress=False)
    other = tmp_path / "other.csv"
    other.write_text("text,label\ngreat movie,positive\nmeh,neutral\n")
    with pytest.raises(DataError, match=r"line 3: label 'neutral' is not one the model was trained on"):
        model.evaluate(other)
    result = model.evaluate(sentiment_csv)
    assert result.n == 80 and result.baselines["majority"]["accuracy"] == pytest.approx(0.5)


def test_contract_checks_at_predict_time(tiny_source, sentiment_csv):
    model = graft.fit(sentiment_csv, backbone=tiny_source, strategy="linear_probe", progress=False)
    with pytest.raises(ContractError, match="image files"):
        model.predict(["a.jpg", "b.jpeg"])
    with pytest.raises(ContractError, match="expected a text column 'text'"):
        model.predict(pd.DataFrame({"body": ["great"], "x": [1]}))
    with pytest.raises(ContractError, match="wrap it in a list"):
        model.predict("great movie")
    assert model.predict(pd.DataFrame({"text": ["great movie"], "id": [7]})) in (["positive"], ["negative"])


def test_truncated_texts_are_counted_and_reported(tiny_source, sentiment_csv):
    cfg = RunConfig().replace("backbone", max_length=6)
    model = graft.fit(
        sentiment_csv, backbone=tiny_source, strategy="linear_probe", config=cfg, progress=False
    )
    assert model.report_.data["truncated_texts"] > 0


def test_fit_rejects_a_partial_strategy_on_too_few_groups(tiny_source, sentiment_csv):
    cfg = RunConfig(strategy=StrategyConfig(kind="partial", unfreeze_top=9), train=TrainConfig(epochs=1))
    with pytest.raises(graft.ConfigError, match="only 3 layer groups"):
        graft.fit(sentiment_csv, backbone=tiny_source, config=cfg, progress=False)


def test_predictions_are_deterministic(tiny_source, sentiment_csv):
    a = graft.fit(sentiment_csv, backbone=tiny_source, strategy="linear_probe", progress=False)
    b = graft.fit(sentiment_csv, backbone=tiny_source, strategy="linear_probe", progress=False)
    np.testing.assert_array_equal(a.predict_proba(["great", "dull"]), b.predict_proba(["great", "dull"]))


def test_a_fine_tune_is_compared_with_the_probe_on_the_same_rows(tiny_source, sentiment_csv):
    cfg = RunConfig(train=TrainConfig(epochs=1))
    model = graft.fit(sentiment_csv, backbone=tiny_source, strategy="full", config=cfg, progress=False)
    test = model.report_.test
    assert set(test.baselines) >= {"prior", "majority", "linear_probe"}
    assert 0 <= test.baselines["linear_probe"]["accuracy"] <= 1
    gain = test.comparisons["linear_probe"]["accuracy"]
    expected = test.metrics["accuracy"] - test.baselines["linear_probe"]["accuracy"]
    assert gain["difference"] == pytest.approx(expected)
    lo, hi = gain["interval_95"]
    assert lo <= gain["difference"] <= hi
    assert model.report_.data["baselines"]["linear_probe"].startswith("trained")
    assert {"evaluate", "baselines"} <= set(model.report_.timings)
    assert "gain over the frozen linear probe" in model.report_.to_html()


def test_baselines_none_and_a_shipped_probe_train_nothing_more(tiny_source, sentiment_csv):
    probe = graft.fit(sentiment_csv, backbone=tiny_source, strategy="linear_probe", progress=False)
    assert "linear_probe" not in probe.report_.test.baselines
    assert "shipped model is the linear probe" in probe.report_.data["baselines"]["linear_probe"]
    none = graft.fit(sentiment_csv, backbone=tiny_source, strategy="full", baselines="none", progress=False,
                     config=RunConfig(train=TrainConfig(epochs=1)))  # fmt: skip
    assert set(none.report_.test.baselines) == {"prior", "majority"} and not none.report_.test.comparisons


def test_probabilities_are_calibrated_on_out_of_fold_outputs_and_the_bundle_keeps_it(
    tiny_source, sentiment_csv, tmp_path
):
    from graft.evaluation.calibration import softmax

    model = graft.fit(sentiment_csv, backbone=tiny_source, strategy="linear_probe", out=tmp_path / "r",
                      progress=False)  # fmt: skip
    cal = model.report_.test.calibration
    assert cal["temperature"] > 0 and "out-of-fold outputs" in cal["fitted_on"]
    assert 0 <= cal["ece_after"] <= 1 and 0 <= cal["ece_before"] <= 1 and cal["reliability_after"]
    assert {"log_loss", "brier", "roc_auc", "pr_auc", "ece"} <= set(model.report_.test.metrics)
    loaded = graft.load(tmp_path / "r")
    assert loaded.manifest_["calibration"]["temperature"] == pytest.approx(cal["temperature"])
    texts = ["a great film", "an awful film", "it was fine"]
    logits = loaded._outputs(texts, cache=False, progress=False).numpy()
    proba = loaded.predict_proba(texts)
    assert np.allclose(proba, softmax(logits / cal["temperature"]), atol=1e-5)
    assert np.array_equal(proba.argmax(1), logits.argmax(1))
    assert "Calibration" in (tmp_path / "r" / "bundle" / "report.html").read_text()


def test_target_precision_stores_a_threshold_and_predict_abstains_below_it(tiny_source, tmp_path):
    rows = make_sentiment(60)
    # a third of the texts carry no sentiment word: the model cannot be confident about them
    rows += [
        (" ".join(random.Random(i).sample(FILLER, 4)), "positive" if i % 2 else "negative") for i in range(40)
    ]
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    cfg = RunConfig(evaluation=graft.EvalConfig(target_precision=0.9))
    model = graft.fit(texts, labels=labels, backbone=tiny_source, strategy="linear_probe", progress=False,
                      config=cfg, out=tmp_path / "r")  # fmt: skip
    abstain = model.report_.test.abstain
    chosen, test = abstain["chosen"], abstain["test"]
    assert chosen["target_precision"] == 0.9 and 0 < chosen["threshold"] <= 1
    assert 0 <= test["coverage"] <= 1 and test["answered"] <= test["rows"]
    assert len(abstain["curve"]) > 1 and abstain["curve"][-1]["coverage"] == 1.0
    loaded = graft.load(tmp_path / "r")
    assert loaded.manifest_["abstain"]["threshold"] == pytest.approx(chosen["threshold"])
    proba = loaded.predict_proba(texts)
    answers = loaded.predict(texts)
    low = proba.max(1) < chosen["threshold"]
    assert [a == "abstain" for a in answers] == low.tolist()
    assert "abstain" not in loaded.predict(texts, abstain=False)
    assert "--target-precision" in (tmp_path / "r" / "bundle" / "report.html").read_text()


def test_small_data_without_a_test_file_is_scored_by_a_cross_validated_estimate(tiny_source):
    rows = make_sentiment(20)
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    model = graft.fit(texts, labels=labels, backbone=tiny_source, strategy="linear_probe", progress=False)
    report = model.report_
    assert report.test.split == "5-fold cross-validated" and report.test.n == 40  # every row scored once
    assert report.data["estimate"] == "5-fold cross-validated" and report.data["train"] == 40
    assert "cross-validated estimate over all 40 examples" in report.data["split"]
    assert report.test.metrics["accuracy"] > report.test.baselines["prior"]["accuracy"]
    assert "5-fold cross-validated" in report.to_html()


def test_repeated_cross_validated_estimate_reports_the_mean_and_spread(tiny_source):
    rows = make_sentiment(20)
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    cfg = RunConfig().replace("data", repeats=2).replace("evaluation", baselines="none")
    model = graft.fit(texts, labels=labels, backbone=tiny_source, strategy="linear_probe", progress=False,
                      config=cfg)  # fmt: skip
    test = model.report_.test
    assert test.repeats["n"] == 2 and len(test.repeats["values"]["accuracy"]) == 2
    assert test.metrics["accuracy"] == pytest.approx(np.mean(test.repeats["values"]["accuracy"]))
    assert any("means over 2 repeats" in note for note in test.notes)
    assert "repeated 2 times with other folds" in model.report_.data["split"]


def test_target_precision_is_refused_where_it_cannot_apply(tiny_source):
    cfg = RunConfig(evaluation=graft.EvalConfig(target_precision=0.9))
    texts = [f"{w} film" for w in POSITIVE + NEGATIVE]
    with pytest.raises(graft.ConfigError, match="class named 'abstain'"):
        graft.fit(
            texts, labels=["abstain"] * 8 + ["keep"] * 8, backbone=tiny_source, config=cfg, progress=False
        )
    with pytest.raises(graft.ConfigError, match="applies to multiclass"):
        graft.fit(texts, labels=[i + 0.5 for i in range(16)], task="regression", backbone=tiny_source,
                  config=cfg, progress=False)  # fmt: skip
    with pytest.raises(graft.ConfigError, match=r"target_precision must be a number in \(0, 1\)"):
        graft.EvalConfig(target_precision=1.5)


def test_skewed_classes_choose_settings_on_macro_f1(tiny_source):
    rows = [(t, y) for t, y in make_sentiment(40) if y == "negative"][:40]
    rows += [(t, y) for t, y in make_sentiment(40) if y == "positive"][:8]  # 5:1
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    model = graft.fit(texts, labels=labels, backbone=tiny_source, strategy="linear_probe", progress=False,
                      baselines="none")  # fmt: skip
    assert model.report_.validation["metric"] == "macro_f1"


def test_balanced_class_weights_train_the_probe_and_the_fine_tune(tiny_source, monkeypatch):
    from graft.heads import MulticlassHead

    rows = [(t, y) for t, y in make_sentiment(40) if y == "negative"][:40]
    rows += [(t, y) for t, y in make_sentiment(40) if y == "positive"][:10]  # 4:1
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    weights = []
    original = MulticlassHead.loss

    def spy(self, outputs, targets):
        weights.append(self.class_weight)
        return original(self, outputs, targets)

    monkeypatch.setattr(MulticlassHead, "loss", spy)
    cfg = RunConfig(
        train=TrainConfig(class_weight="balanced", epochs=1), evaluation=graft.EvalConfig(baselines="none")
    )
    model = graft.fit(texts, labels=labels, backbone=tiny_source, strategy="full", config=cfg, progress=False)
    assert weights and all(w is not None and float(w[1]) > float(w[0]) for w in weights)
    assert model.report_.test.n > 0 and model.predict(["great film"])[0] in ("negative", "positive")
    with pytest.raises(graft.ConfigError, match="--class-weight applies to classification"):
        values = [float(i) for i in range(len(texts))]
        graft.fit(texts, labels=values, task="regression", backbone=tiny_source, config=cfg, progress=False)
