"""scikit-learn estimators around :func:`graft.fit`: ``GraftClassifier`` and ``GraftRegressor``.

They take what ``graft fit`` takes as inputs (texts, or image/audio file paths) and run the same recipe,
so they fit in a ``Pipeline``, ``cross_val_score`` and ``GridSearchCV``. Inside ``fit`` graft still
chooses settings on the training rows (k-fold or a hold-out), then refits on all of them
(``refit="all"``); the held-out evaluation and the baselines are skipped (scikit-learn's own
cross-validation does that job).

Example:
    >>> from sklearn.model_selection import cross_val_score
    >>> clf = GraftClassifier(strategy="linear_probe")
    >>> cross_val_score(clf, texts, labels, cv=3).mean()      # doctest: +SKIP

scikit-learn's ``check_estimator`` feeds numeric matrices; these estimators take texts or file paths,
so only the checks about parameters and cloning apply (tested: ``check_parameters_default_constructible``,
``check_no_attributes_set_in_init``, ``check_get_params_invariance``, ``check_set_params``, ``clone``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin


class _GraftEstimator(BaseEstimator):
    _task = "multiclass"

    def __init__(
        self,
        backbone: str = "minilm",
        strategy: str = "auto",
        epochs: int = 4,
        lr: float = 5e-5,
        batch_size: int = 32,
        budget: str = "10m",
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.backbone = backbone
        self.strategy = strategy
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.budget = budget
        self.seed = seed
        self.progress = progress

    def _config(self) -> Any:
        from graft.config import RunConfig

        return (
            RunConfig()
            .replace("data", estimate="holdout", refit="all")
            .replace("train", epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed)
            .replace("strategy", budget=self.budget)
            .replace("evaluation", baselines="none")
        )

    def fit(self, X: Any, y: Any) -> _GraftEstimator:
        """Fit graft's recipe on inputs ``X`` (texts or file paths) and targets ``y``."""
        import graft

        inputs, targets = _inputs(X), list(np.asarray(y).tolist())
        if len(inputs) != len(targets):
            raise ValueError(f"X has {len(inputs)} inputs but y has {len(targets)} targets")
        self.model_ = graft.fit(
            inputs, labels=targets, task=self._task, backbone=self.backbone, strategy=self.strategy,
            config=self._config(), progress=self.progress,
        )  # fmt: skip
        return self

    def _activated(self, X: Any) -> np.ndarray:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "model_")
        return self.model_.activated(self.model_.inputs(_inputs(X)))


class GraftClassifier(ClassifierMixin, _GraftEstimator):
    """graft's recipe as a scikit-learn classifier (see the module docstring)."""

    def fit(self, X: Any, y: Any) -> GraftClassifier:
        super().fit(X, y)
        self.classes_ = np.asarray(self.model_.label_space)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (calibrated where the model is), columns in ``classes_`` order."""
        return self._activated(X)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each input (no abstaining, no cost rule: scikit-learn's contract)."""
        return self.classes_[self.predict_proba(X).argmax(1)]


class GraftRegressor(RegressorMixin, _GraftEstimator):
    """graft's recipe as a scikit-learn regressor (see the module docstring)."""

    _task = "regression"

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self._activated(X), dtype=np.float64).ravel()


def _inputs(X: Any) -> list[Any]:
    """Texts or paths from a list, a 1-D array, or a one-column DataFrame / 2-D array."""
    values = np.asarray(X, dtype=object)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"X must be one input per row (texts or file paths), got shape {values.shape}")
    return [str(v) for v in values]
