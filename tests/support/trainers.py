"""Trainers for the retraining tests, named by TRAINER=tests.support.trainers:<function>."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier


def swapped_labels(x: np.ndarray, y: np.ndarray) -> Any:
    """Deliberately worse on every metric: a forest fitted to each row's label swapped for
    the next class learns to answer wrong (a forest fitted to shuffled labels answers the
    majority class, which on drifted data scores the stale model's accuracy)."""
    classes = np.unique(y)
    swapped = classes[(np.searchsorted(classes, y) + 1) % len(classes)]
    return RandomForestClassifier(n_estimators=20, random_state=0).fit(x, swapped)


def unfitted(x: np.ndarray, y: np.ndarray) -> Any:
    return RandomForestClassifier()


def nothing(x: np.ndarray, y: np.ndarray) -> Any:
    return None


def forest_regressor(x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=30, max_depth=6, random_state=0).fit(x, y)


def slow_forest(x: np.ndarray, y: np.ndarray) -> Any:
    """The default trainer after a pause: a candidate in flight long enough for another
    job to start meanwhile."""
    import time

    from func.retrain.training import default_trainer

    time.sleep(8)
    return default_trainer(x, y)
