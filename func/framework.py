"""The function as a functions-framework HTTP function, for platforms that run one:

    functions-framework --source func/framework.py --target predict

Every request is dispatched into the same app `python -m func` serves.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import functions_framework
from flask import Request

# functions-framework loads this file by path, not as part of the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from func.app import create_app  # noqa: E402

# functions-framework imports this file before its server forks, and a loader thread
# would not survive the fork: load here, in the importing process.
app = create_app(load=False)
app.extensions["warmstart"].load()


@functions_framework.http
def predict(request: Request) -> Any:
    with app.request_context(request.environ):
        return app.full_dispatch_request()
