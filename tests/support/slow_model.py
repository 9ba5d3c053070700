"""A joblib model file that loads slowly in every process but the first to open it, so
tests can hold one worker in "loading" while another serves."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import joblib


def load_slowly(model: str, claim: str, seconds: float) -> Any:
    """The model at `model`; after `seconds` of sleep unless this process claims first."""
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        time.sleep(seconds)
    return joblib.load(model)


class _SlowLoad:
    def __init__(self, *args: Any) -> None:
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return load_slowly, self.args


def write(trained: Path, folder: Path, seconds: float) -> Path:
    """A joblib file (and its card) in `folder` that loads `trained`/model.joblib slowly."""
    path = folder / "slow.joblib"
    joblib.dump(_SlowLoad(str(trained / "model.joblib"), str(folder / "claimed"), seconds), path)
    (folder / "slow.card.json").write_text((trained / "model.card.json").read_text())
    return path
