"""Drop pyarrow's Dataset, Acero and Substrait libraries from a virtualenv (the image's
`deps` stage runs this from scripts/prune_venv.sh):

    python scripts/prune_arrow.py SITE_PACKAGES

pyarrow links every extension, and libarrow_python itself, against all of its libraries,
used or not. Measured with `nm -D` on pyarrow 26: `lib`, `libarrow_python`, `_parquet`,
`_csv`, `_json`, `_compute` and `_fs` (all that func imports) use no symbol of
libarrow_dataset, libarrow_acero or libarrow_substrait (9 MB), which only
`pyarrow.dataset`, `pyarrow.acero` and `pyarrow.substrait` need: partitioned datasets and
query plans, which no batch job reads.

So: every module that does use one of them is deleted with them, and the others lose the
link (patchelf --remove-needed). The check is by symbol, not by a list of names: if a
later pyarrow makes a kept module call into a dropped library, this script stops the build
and names it, instead of shipping a module that fails at its first call.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DROPPED = ("libarrow_dataset", "libarrow_acero", "libarrow_substrait")
# the Python side of what is dropped (and the `_dataset_*` extensions, which import
# `_dataset`): importing them now says the module is missing
DROPPED_MODULES = ("dataset.py", "acero.py", "substrait.py")
# what func imports: losing one of these would break batch jobs, so it stops the build
REQUIRED = ("lib", "_parquet", "_csv", "_json", "_compute", "_fs", "libarrow_python")


def dynamic_symbols(library: Path, *, defined: bool) -> set[str]:
    which = "--defined-only" if defined else "--undefined-only"
    out = subprocess.run(["nm", "-D", which, str(library)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def needed(library: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


def stem(path: Path) -> str:
    """`_csv.cpython-311-x86_64-linux-gnu.so` -> `_csv`, `libarrow.so.2600` -> `libarrow`."""
    return path.name.split(".", 1)[0]


def prune(site: Path) -> int:
    folder = site / "pyarrow"
    libraries = [p for p in folder.iterdir() if ".so" in p.name and p.is_file() and not p.is_symlink()]
    dropped = [p for p in libraries if stem(p) in DROPPED]
    if len(dropped) != len(DROPPED):
        print(f"prune_arrow: expected {', '.join(DROPPED)} in {folder}; found {[p.name for p in dropped]}")
        return 1
    dropped_symbols = set().union(*(dynamic_symbols(p, defined=True) for p in dropped))
    dropped_sonames = {p.name for p in dropped}
    removed, unlinked = [], []
    for library in sorted(set(libraries) - set(dropped)):
        if dynamic_symbols(library, defined=False) & dropped_symbols:
            if stem(library) in REQUIRED:
                print(f"prune_arrow: {library.name} calls into {', '.join(DROPPED)}; keep them for this pyarrow")
                return 1
            library.unlink()
            removed.append(library.name)
            continue
        links = [name for name in needed(library) if name in dropped_sonames]
        if links:
            args = [arg for name in links for arg in ("--remove-needed", name)]
            subprocess.run(["patchelf", *args, str(library)], check=True)
            unlinked.append(library.name)
    for path in folder.iterdir():
        if stem(path) in DROPPED or path.name in DROPPED_MODULES or stem(path).startswith("_dataset"):
            path.unlink()
    print(f"prune_arrow: dropped {', '.join(sorted(dropped_sonames))} and {', '.join(removed)}")
    print(f"prune_arrow: unlinked them from {len(unlinked)} libraries")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.split("\n\n")[1].strip())
        sys.exit(0 if len(sys.argv) == 2 else 2)
    sys.exit(prune(Path(os.path.abspath(sys.argv[1]))))
