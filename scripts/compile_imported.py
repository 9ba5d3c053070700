#!/usr/bin/env python3
"""Bytecode for exactly the modules the function image's server imports, after
`pip install --no-compile`. Three steps of the Dockerfile run it:

    python scripts/compile_imported.py --list FILE        which venv modules are imported
    python scripts/compile_imported.py --sourceless FILE  those, as bytecode alone
    python scripts/compile_imported.py                    func's, into __pycache__

(from the folder that holds func/, but --sourceless, which needs only FILE.)

A read-only root cannot cache bytecode, so a module imported without it is compiled again
at every start; a module never imported needs none (8.5 of the venv's 15 MB of bytecode
was for modules no serving process imported: loadtests/loaded_libs.py). What is imported
is found by importing, not listed by hand: every module of func/ that serving reaches
(at start, or on the first batch job, CloudEvent or explanation), and what tracing
imports once an OTLP endpoint is set. The retraining and rollout jobs run from images of
their own, and `__main__` modules would run, so neither is imported here.

The venv's imported modules ship as bytecode alone (`module.pyc` where `module.py` was,
which Python imports as it would the source): their sources would be 5.9 MB more, and a
traceback through them still names file, line and function, without the line's text.
func/ keeps its sources. The list is its own build stage, so the venv layer is rebuilt
only when the set of imported modules changes, not with every change to func/.
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


def imported_sources() -> list[str]:
    """The source files of every module serving imports, the venv's and func's."""
    sys.path.insert(0, str(Path.cwd()))
    for name in serving_modules():
        importlib.import_module(name)
    import func

    roots = tuple(str(p) for p in (Path(sys.prefix).resolve(), Path(func.__file__).resolve().parent))
    sources = (getattr(m, "__file__", None) for m in list(sys.modules.values()))
    return sorted({s for s in sources if s and s.endswith(".py") and str(Path(s).resolve()).startswith(roots)})


def in_venv(source: str) -> bool:
    return str(Path(source).resolve()).startswith(str(Path(sys.prefix).resolve()) + "/")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step = parser.add_mutually_exclusive_group()
    step.add_argument("--list", metavar="FILE", help="write the venv's imported source files to FILE")
    step.add_argument(
        "--sourceless", metavar="FILE", help="compile FILE's sources to bytecode beside them, then remove them"
    )
    args = parser.parse_args()
    if args.sourceless:
        sources = Path(args.sourceless).read_text().split()
        for source in sources:
            py_compile.compile(source, cfile=source + "c", doraise=True)
            Path(source).unlink()
        print(f"{len(sources)} modules now bytecode alone")
        return 0
    sources = imported_sources()
    if args.list:
        venv = [s for s in sources if in_venv(s)]
        Path(args.list).write_text("".join(f"{s}\n" for s in venv))
        print(f"{len(venv)} of the venv's modules are imported")
        return 0
    for source in sources:
        py_compile.compile(source, cfile=importlib.util.cache_from_source(source), doraise=True)
    print(f"compiled {len(sources)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
