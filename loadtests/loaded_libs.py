#!/usr/bin/env python3
"""Which shared libraries of pyarrow and onnxruntime a serving process actually maps.

Starts `python -m func` (2 workers) with the given interpreter, sends it every kind of
work it does: own JSON, V1, V2 binary, a prediction CloudEvent, /metrics, and a batch job
from and to each format (CSV, JSON lines, Parquet); then reads /proc/PID/maps of the
master and of every worker, and lists each package's .so files as loaded or never
loaded, with their sizes. The Dockerfile's `deps` stage drops what no run loaded
(scripts/prune_venv.sh); the image tests run every one of these paths in the image.

    .venv/bin/python loadtests/loaded_libs.py [--python /path/to/venv/bin/python]
        [--out loadtests/results/loaded_libs.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_file  # noqa: E402

from tests.support.images import exercise_every_path, imported_modules, write_batch_inputs  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402

PACKAGES = ("pyarrow", "onnxruntime", "numpy", "numpy.libs")


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            pids += process_tree(int(child))
    return pids


def mapped_files(pids: list[int]) -> set[str]:
    files: set[str] = set()
    for pid in pids:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                files.add(os.path.realpath(parts[5]))
    return files


def site_packages(python: str) -> Path:
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the environment to measure")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "loaded_libs.json")
    args = parser.parse_args()

    site = site_packages(args.python)
    with tempfile.TemporaryDirectory() as tmp:
        jobs = Path(tmp) / "jobs"
        jobs.mkdir()
        # -X importtime in every process: which Python modules the same work imports
        env = {"WORKERS": "2", "BATCH_ALLOW": f"{jobs}/", "PYTHONPROFILEIMPORTTIME": "1"}
        server = ServerProcess(env, cmd=[args.python, "-m", "func"], log_dir=Path(tmp))
        server.start()
        try:
            server.wait_ready(60)
            inputs = write_batch_inputs(jobs)
            # twice: each request may land on either worker; the union over workers counts
            for _ in range(2):
                exercise_every_path(server.url, inputs, jobs, session=requests.Session())
            loaded = mapped_files(process_tree(server.proc.pid))
        finally:
            server.kill()
        imported = imported_modules(server.log())

    report: dict[str, dict] = {}
    for package in PACKAGES:
        folder = site / package
        if not folder.is_dir():
            continue
        libs = sorted(p for p in folder.rglob("*.so*") if p.is_file() and not p.is_symlink())
        entry = {"loaded": {}, "not_loaded": {}}
        for lib in libs:
            key = "loaded" if os.path.realpath(lib) in loaded else "not_loaded"
            entry[key][str(lib.relative_to(site))] = lib.stat().st_size
        if not package.endswith(".libs"):
            entry["subpackages_imported"] = sorted({m.split(".")[1] for m in imported if m.startswith(package + ".")})
            entry["subpackages_never_imported"] = sorted(
                p.name
                for p in folder.iterdir()
                if p.is_dir() and p.name not in entry["subpackages_imported"] and (p / "__init__.py").exists()
            )
        report[package] = entry
        print(
            f"{package}: {len(entry['loaded'])} loaded, {sum(entry['loaded'].values()) / 1e6:.1f} MB; "
            f"{len(entry['not_loaded'])} never loaded, {sum(entry['not_loaded'].values()) / 1e6:.1f} MB"
        )
        for name, size in sorted(entry["not_loaded"].items(), key=lambda kv: -kv[1]):
            print(f"  never loaded  {size / 1e6:7.2f} MB  {name}")
        if entry.get("subpackages_never_imported"):
            print(f"  subpackages never imported: {', '.join(entry['subpackages_never_imported'])}")
    results_file.write(args.out, {"python": args.python, "packages": report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
