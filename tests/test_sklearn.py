"""graft.sklearn: the recipe as scikit-learn estimators, in Pipeline, cross_val_score and GridSearchCV."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from graft.sklearn import GraftClassifier, GraftRegressor
from tests.conftest import FILLER, make_sentiment


@pytest.fixture
def sentiment():
    rows = make_sentiment(30)
    return np.array([t for t, _ in rows], dtype=object), np.array([y for _, y in rows])


@pytest.mark.parametrize("estimator", [GraftClassifier(), GraftRegressor()])
def test_the_parameter_checks_of_check_estimator_pass(estimator):
    name = type(estimator).__name__
    check_parameters_default_constructible(name, estimator)
    check_no_attributes_set_in_init(name, estimator)
    check_get_params_invariance(name, estimator)
    check_set_params(name, estimator)
    assert clone(estimator).get_params() == estimator.get_params()


def test_classifier_fits_predicts_and_scores_in_a_pipeline(tiny_source, sentiment):
    X, y = sentiment
    pipe = make_pipeline(
        FunctionTransformer(lambda xs: np.array([x.lower() for x in xs], dtype=object)),
        GraftClassifier(backbone=tiny_source, strategy="linear_probe"),
    )
    pipe.fit(X, y)
    clf = pipe[-1]
    assert list(clf.classes_) == ["negative", "positive"]
    proba = pipe.predict_proba(X[:5])
    assert proba.shape == (5, 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert list(pipe.predict(X[:5])) == list(clf.classes_[proba.argmax(1)])
    assert pipe.score(X, y) >= 0.85


def test_cross_val_score_and_grid_search_run_the_recipe(tiny_source, sentiment):
    X, y = sentiment
    clf = GraftClassifier(backbone=tiny_source, strategy="linear_probe")
    scores = cross_val_score(clf, X, y, cv=2)
    assert len(scores) == 2 and scores.min() > 0.5  # above chance on 30 rows per fold
    grid = GridSearchCV(clf, {"strategy": ["linear_probe", "full"], "epochs": [1]}, cv=2).fit(X, y)
    assert grid.best_params_["strategy"] in ("linear_probe", "full") and grid.best_score_ > 0.5


def test_regressor_and_bad_input(tiny_source):
    rng = random.Random(0)
    texts, values = [], []
    for _ in range(60):
        n = rng.randint(0, 3)
        texts.append(" ".join(rng.sample(FILLER, 2) + ["great"] * n + ["movie"]))
        values.append(1.5 * n + rng.random() * 0.1)
    reg = GraftRegressor(backbone=tiny_source, strategy="linear_probe").fit(texts, values)
    assert reg.predict(texts[:4]).shape == (4,) and reg.score(texts, values) > 0.5
    with pytest.raises(ValueError, match="one input per row"):
        reg.predict(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="3 inputs but y has 2"):
        GraftClassifier(backbone=tiny_source).fit(["a", "b", "c"], ["x", "y"])
