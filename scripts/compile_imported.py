#!/usr/bin/env python3
"""Write bytecode for exactly the modules the function image's server imports; the
Dockerfile's last stage runs it, after `pip install --no-compile`.

    python scripts/compile_imported.py      (from the folder that holds func/)

A read-only root cannot cache bytecode, so a module imported without it is compiled again
at every start; a module never imported needs none (8.5 of the venv's 15 MB of bytecode
was for modules no serving process imported: loadtests/loaded_libs.py). What is imported
is found by importing, not listed by hand: every module of func/ that serving reaches
(at start, or on the first batch job, CloudEvent or explanation), and what tracing
imports once an OTLP endpoint is set. The retraining and rollout jobs run from images of
their own, and `__main__` modules would run, so neither is imported here.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import py_compile
import sys
from pathlib import Path

SKIPPED = ("func.retrain", "func.rollout", "func.dataset", "func.smoke", "func.server.framework")
# Imported inside functions, on first use. A module missed here still works, compiled at
# each start; tests/test_images.py lists any imported module that has no bytecode.
# The model runtime and explanations (onnxruntime when the model loads, NumPy's random
# and masked arrays in the explainers):
LAZY = ("onnxruntime", "numpy.ma", "numpy.random")
# Tracing, once OTEL_EXPORTER_OTLP_*ENDPOINT is set: the SDK and our exporter, with the
# parts of the standard library it sends with.
TRACING = (
    "func.observe.otlp_export",
    "opentelemetry.sdk.resources",
    "opentelemetry.sdk.trace",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.trace.propagation.tracecontext",
)
# Batch jobs and the prediction log: fsspec and pyarrow's readers and writers, and
# python-dateutil, which the cloudevents SDK imports to read an event's time.
BATCH = (
    "dateutil.relativedelta",
    "fsspec.implementations.chained",
    "fsspec.implementations.local",
    "pyarrow.compute",
    "pyarrow.csv",
    "pyarrow.json",
    "pyarrow.parquet",
)


def serving_modules() -> list[str]:
    import func

    names = [
        info.name
        for info in pkgutil.walk_packages(func.__path__, "func.")
        if not info.name.endswith("__main__") and not info.name.startswith(SKIPPED)
    ]
    return ["func", *names, *LAZY, *TRACING, *BATCH]


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    sys.path.insert(0, str(Path.cwd()))
    for name in serving_modules():
        importlib.import_module(name)
    sources = [getattr(m, "__file__", None) for m in list(sys.modules.values())]
    import func

    roots = tuple(str(p) for p in (Path(sys.prefix).resolve(), Path(func.__file__).resolve().parent))
    compiled = 0
    for source in sources:
        if not source or not source.endswith(".py") or not str(Path(source).resolve()).startswith(roots):
            continue
        py_compile.compile(source, cfile=importlib.util.cache_from_source(source), doraise=True)
        compiled += 1
    print(f"compiled {compiled} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
