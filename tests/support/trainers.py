"""Trainers for the retraining tests, named by TRAINER=tests.support.trainers:<function>."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier


def shuffled_labels(x: np.ndarray, y: np.ndarray) -> Any:
    """Deliberately worse: a forest fitted to labels in random order learns nothing."""
    return RandomForestClassifier(n_estimators=20, random_state=0).fit(x, np.random.default_rng(0).permutation(y))


def unfitted(x: np.ndarray, y: np.ndarray) -> Any:
    return RandomForestClassifier()


def nothing(x: np.ndarray, y: np.ndarray) -> Any:
    return None


def forest_regressor(x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=30, max_depth=6, random_state=0).fit(x, y)
