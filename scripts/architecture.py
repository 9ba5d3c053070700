"""Draw func/'s wings and the arrows between them from the real import graph.

    python scripts/architecture.py            # writes docs/architecture.png and the graph in docs/architecture.md
    python scripts/architecture.py --check    # exits 1 if the graph in the doc is stale (the tests run this)

The picture is never drawn by hand: grimp reads every import of the package (lazy ones
inside functions too), each module is folded into its wing (a subpackage of func/; "entry" for the
modules `python -m` runs at the top, func/__main__.py, func/smoke.py and func/dataset.py; "root" for
config, errors, cpus and process), and an arrow A -> B
means some module of A imports some module of B; its label is how many such imports.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
PICTURE = ROOT / "docs" / "architecture.png"
BEGIN, END = "<!-- wings graph: made by scripts/architecture.py -->", "<!-- end of wings graph -->"

# Rows of the picture, top to bottom: the serving path, then the jobs beside it.
ENTRY_MODULES = {"func.__main__", "func.smoke", "func.dataset"}
ROWS = [["entry"], ["server"], ["api"], ["batch", "observe", "explain"], ["codecs"], ["model"], ["root"]]
JOBS = ["retrain", "rollout"]


def wing(module: str) -> str:
    if module in ENTRY_MODULES:
        return "entry"
    parts = module.split(".")
    if len(parts) >= 2 and (ROOT / "func" / parts[1]).is_dir():
        return parts[1]
    return "root"


def wing_arrows() -> Counter[tuple[str, str]]:
    """(importer wing, imported wing) -> number of module-to-module imports."""
    sys.path.insert(0, str(ROOT))
    graph = grimp.build_graph("func")
    arrows: Counter[tuple[str, str]] = Counter()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            a, b = wing(importer), wing(imported)
            if a != b:
                arrows[a, b] += 1
    return arrows


def mermaid(arrows: Counter[tuple[str, str]]) -> str:
    lines = ["```mermaid", "flowchart TD"]
    lines += [f"  {a} -->|{n}| {b}" for (a, b), n in sorted(arrows.items())]
    lines.append("```")
    return "\n".join(lines)


def positions() -> dict[str, tuple[float, float]]:
    """Rows top to bottom; a single wing of a row sits left or right of the centre by
    turns, so an arrow that skips rows does not run through the wings between."""
    pos: dict[str, tuple[float, float]] = {}
    for y, row in enumerate(ROWS):
        shift = 0.0 if len(row) > 1 else (0.35 if y % 2 else -0.35)
        for x, name in enumerate(row):
            pos[name] = (1.4 * (x - (len(row) - 1) / 2) + shift, -y)
    for i, name in enumerate(JOBS):
        pos[name] = (2.9, -2.2 - 1.6 * i)
    return pos


def draw(arrows: Counter[tuple[str, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = positions()
    fig, ax = plt.subplots(figsize=(8, 7), dpi=100)
    for (a, b), n in sorted(arrows.items()):
        (x1, y1), (x2, y2) = pos[a], pos[b]
        bend = 0.06 + 0.1 * max(0.0, abs(y1 - y2) - 1)
        ax.annotate(
            "",
            xy=(x2, y2),
            xytext=(x1, y1),
            arrowprops={
                "arrowstyle": "-|>",
                "color": "#ccc" if b == "root" else "#555",
                "shrinkA": 22,
                "shrinkB": 22,
                "connectionstyle": f"arc3,rad={bend:.2f}",
                "lw": 0.6 + 0.15 * min(n, 12),
            },
        )
        ax.text((x1 + x2) / 2, (y1 + y2) / 2, str(n), fontsize=7, color="#333", ha="center")
    for name, (x, y) in pos.items():
        colour = "#fde7c8" if name in JOBS else "#d9e8fb"
        ax.text(
            x,
            y,
            name,
            ha="center",
            va="center",
            fontsize=11,
            bbox={"boxstyle": "round,pad=0.5", "fc": colour, "ec": "#334"},
        )
    ax.set_xlim(-2.4, 3.6)
    ax.set_ylim(-len(ROWS) + 0.4, 0.6)
    ax.axis("off")
    ax.set_title("func/: wings and imports (arrow = imports; label = module imports)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def with_graph(doc: str, block: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{DOC}: the markers {BEGIN!r} ... {END!r} are missing")
    return pattern.sub(lambda _: f"{BEGIN}\n{block}\n{END}", doc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the graph in docs/architecture.md is stale")
    args = parser.parse_args()
    arrows = wing_arrows()
    unknown = {w for pair in arrows for w in pair} - {n for row in ROWS for n in row} - set(JOBS)
    if unknown:
        print(f"wings missing from the picture's layout (ROWS/JOBS): {sorted(unknown)}", file=sys.stderr)
        return 1
    doc = DOC.read_text()
    wanted = with_graph(doc, mermaid(arrows))
    if args.check:
        if wanted != doc:
            print(f"{DOC.relative_to(ROOT)} is stale: run python scripts/architecture.py", file=sys.stderr)
            return 1
        print(f"{len(arrows)} arrows between wings; {DOC.relative_to(ROOT)} is current")
        return 0
    DOC.write_text(wanted)
    draw(arrows, PICTURE)
    print(f"{len(arrows)} arrows between wings: wrote {PICTURE.relative_to(ROOT)} and {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
