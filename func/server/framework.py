"""The function as a functions-framework HTTP function, for platforms that run one:

    functions-framework --source func/server/framework.py --target predict

Every request is dispatched into the same app `python -m func` serves.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import functions_framework
from flask import Request

# functions-framework loads this file by path, not as part of the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from func.api.app import create_app  # noqa: E402

# functions-framework imports this file before its server forks: the model (and
# onnxruntime, which must not cross a fork) loads in the serving process, on its first
# request, which waits for it.
app = create_app(load=False)
_state = app.extensions["warmstart"]
_loaded_in: int | None = None
_lock = threading.Lock()


def _ensure_loaded() -> None:
    global _loaded_in
    if _loaded_in != os.getpid():
        with _lock:
            if _loaded_in != os.getpid():
                _state.load()
                _loaded_in = os.getpid()


@functions_framework.http
def predict(request: Request) -> Any:
    _ensure_loaded()
    with app.request_context(request.environ):
        return app.full_dispatch_request()
