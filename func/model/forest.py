"""A tree ensemble as plain arrays in one file, memory-mapped: it answers at once while
onnxruntime builds its session.

onnxruntime builds a forest's session at some tens of MB of ONNX a second (its
TreeEnsemble kernel's set-up), seconds for a model of hundreds of megabytes. The same
trees as flat arrays need no set-up: `model.forest` beside `model.onnx` is mapped, and a
prediction walks the trees with NumPy. It is written from the ONNX bytes wherever they
are written (scripts/export_onnx.py, the retraining job, the image build) and names their
sha256: a forest made from other bytes is ignored, never trusted.

Layout: MAGIC, the JSON header's length (8 bytes, little-endian), the header, then each
array at the 64-byte aligned offset the header gives. No pickle: the arrays are views of
the mapped file (np.frombuffer).

The answers are onnxruntime's, bit for bit (core/providers/cpu/ml/tree_ensemble_aggregator.h),
for what skl2onnx writes for decision trees, random forests, extra trees and gradient
boosting regressors:
- splits BRANCH_LEQ, LT, GTE, GT on float32; a NaN takes the false branch unless the
  node's nodes_missing_value_tracks_true says otherwise;
- leaf weights summed tree by tree in float32, as onnxruntime's one-thread kernel does;
- classifiers (post_transform NONE, non-negative weights): two labels scored in one
  column (s: probabilities [1 - s, s], the second label where s > 0.5), or one column per
  label plus base values (the first highest score's label);
- regressors: one target, SUM or AVERAGE, plus the base value.
Any other model raises Unsupported when the forest is written: onnxruntime alone serves it.
"""

from __future__ import annotations

import json
import logging
import mmap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic_file import write_atomically
from .card import CARD_METADATA_KEY, CardError, ModelCard

if TYPE_CHECKING:
    from .trees import Trees

log = logging.getLogger("warmstart.model")

MAGIC = b"WSFOREST"
VERSION = 1
FOREST_SUFFIX = ".forest"
_ALIGN = 64
_DTYPES = {"int32": np.int32, "float32": np.float32, "uint8": np.uint8}
# Rows x trees walked at once: bounds the index arrays of a large request (8 MB each).
_CHUNK_CELLS = 1 << 20


def forest_path(model_path: str | Path) -> Path:
    """Where a model's forest lives: `model.forest` beside `model.onnx`."""
    return Path(model_path).with_suffix(FOREST_SUFFIX)


class Forest:
    """The mapped arrays and what the header says about them; `predict` answers as
    onnxruntime does on the ONNX model the forest was made from."""

    def __init__(self, header: dict[str, Any], arrays: dict[str, np.ndarray], keep: Any = None) -> None:
        self.header = header
        self.kind: str = header["kind"]  # "binary", "classes" or "regression"
        self.card_json: str = header["card"]
        self.n_features: int = header["n_features"]
        self.depth: int = header["depth"]
        self.roots = arrays["roots"]
        self.feature = arrays["feature"]
        self.threshold = arrays["threshold"]
        self.children = arrays["children"]  # (nodes * 2): [false child, true child]; a leaf points at itself
        self.values = arrays["values"]  # (nodes, columns)
        self.missing_true = arrays.get("missing_true")
        self.modes = arrays.get("modes")
        self.mode: str = header["mode"]
        self.base = np.asarray(header["base"], dtype=np.float32)
        self.average = header["aggregate"] == "AVERAGE"
        labels = header["labels"]
        self.labels = np.asarray(labels, dtype=object if labels and isinstance(labels[0], str) else np.int64)
        self._keep = keep  # the mapping the arrays view

    def predict(self, rows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(labels, probabilities) of a classifier, (None, values) of a regressor."""
        x = np.ascontiguousarray(rows, dtype=np.float32)
        step = max(1, _CHUNK_CELLS // max(1, len(self.roots)))
        scores = (
            np.concatenate([self._scores(x[s : s + step]) for s in range(0, len(x), step)])
            if len(x)
            else (np.zeros((0, self.values.shape[1]), np.float32))
        )
        if self.kind == "binary":
            s = scores[:, 0]
            labels = self.labels[(s > np.float32(0.5)).astype(np.intp)]
            return labels, np.stack([np.float32(1) - s, s], axis=1)
        if self.kind == "classes":
            if self.base.size:
                scores = scores + self.base
            return self.labels[np.argmax(scores, axis=1)], scores
        values = scores[:, 0]
        if self.average:
            values = values / np.float32(len(self.roots))
        if self.base.size:
            values = values + self.base[0]
        return None, values

    def _scores(self, x: np.ndarray) -> np.ndarray:
        """(rows, columns): leaf weights summed tree by tree in float32, in tree order."""
        leaves = self._leaves(x)
        per_tree = self.values[leaves]  # (rows, trees, columns)
        if per_tree.shape[1] == 0:
            return np.zeros((len(x), self.values.shape[1]), np.float32)
        return np.cumsum(per_tree, axis=1, dtype=np.float32)[:, -1, :]

    def _leaves(self, x: np.ndarray) -> np.ndarray:
        n_rows = len(x)
        at = np.broadcast_to(self.roots.astype(np.intp), (n_rows, len(self.roots))).copy()
        row_start = (np.arange(n_rows, dtype=np.intp) * self.n_features)[:, None]
        flat = x.ravel()
        for _ in range(self.depth):
            value = flat[row_start + self.feature[at]]
            threshold = self.threshold[at]
            go_true = _compare(value, threshold, self.mode, None if self.modes is None else self.modes[at])
            if self.missing_true is not None:
                go_true |= np.isnan(value) & self.missing_true[at].astype(bool)
            at = self.children[2 * at + go_true].astype(np.intp)
        return at


def _compare(value: np.ndarray, threshold: np.ndarray, mode: str, modes: np.ndarray | None) -> np.ndarray:
    """Where each node sends its row to the true branch (NaN: never)."""
    if modes is None:
        return _COMPARE[mode](value, threshold)
    result = np.zeros(value.shape, dtype=bool)
    for code, name in enumerate(_MODE_NAMES):
        chosen = modes == code
        result[chosen] = _COMPARE[name](value[chosen], threshold[chosen])
    return result


# The split modes by their code in a forest's `modes` array (func/model/trees.py reads the same).
_MODE_NAMES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT")
_COMPARE = {
    "BRANCH_LEQ": np.less_equal,
    "BRANCH_LT": np.less,
    "BRANCH_GTE": np.greater_equal,
    "BRANCH_GT": np.greater,
}


def forest_bytes(onnx_bytes: bytes, onnx_sha256: str) -> bytes:
    """The forest file of these ONNX bytes; Unsupported (or OnnxReadError) says why a
    model cannot have one."""
    # The ONNX reader loads here, off the serving path: only explanations need it there.
    from .onnx_reader import read_graph, read_metadata
    from .trees import Unsupported, find_tree_ensemble, read_trees

    graph = read_graph(onnx_bytes)
    node = find_tree_ensemble(graph)
    card_json = read_metadata(onnx_bytes).get(CARD_METADATA_KEY)
    if card_json is None:
        raise Unsupported("the ONNX model has no warmstart card (export it with scripts/export_onnx.py)")
    try:
        card = ModelCard.from_json(card_json, CARD_METADATA_KEY)
    except CardError as exc:
        raise Unsupported(str(exc)) from None
    trees = read_trees(node, card.n_features)
    kind = _kind(trees, card)
    if len(graph.nodes) != 1:
        others = sorted({n.op_type for n in graph.nodes if n is not node})
        raise Unsupported(f"the graph has other nodes than the tree ensemble ({', '.join(others)})")
    if node.outputs != graph.outputs:
        raise Unsupported("the tree ensemble's outputs are not the model's outputs")
    branch_modes = sorted({m for m in trees.modes if m != b"LEAF"})
    arrays: dict[str, np.ndarray] = {
        "roots": trees.roots.astype(np.int32),
        "feature": trees.feature.astype(np.int32),
        "threshold": trees.threshold.astype(np.float32),
        "children": _children(trees),
        "values": trees.values.astype(np.float32),
    }
    if trees.missing_true.any():
        arrays["missing_true"] = trees.missing_true.astype(np.uint8)
    if len(branch_modes) > 1:
        codes = {m.encode(): i for i, m in enumerate(_MODE_NAMES)}
        arrays["modes"] = np.array([codes.get(m, 0) for m in trees.modes], dtype=np.uint8)
    header = {
        "format": "warmstart forest",
        "version": VERSION,
        "onnx_sha256": onnx_sha256,
        "kind": kind,
        "card": card_json,
        "n_features": card.n_features,
        "depth": _depth(trees),
        "mode": branch_modes[0].decode() if len(branch_modes) == 1 else "BRANCH_LEQ" if not branch_modes else "mixed",
        "base": trees.base.tolist(),
        "aggregate": trees.aggregate,
        "labels": trees.labels,
    }
    return _layout(header, arrays)


def _kind(trees: Trees, card: ModelCard) -> str:
    from .trees import Unsupported

    if trees.weights_per_leaf > 1:
        raise Unsupported("a leaf has several weights for one score column")
    if trees.post_transform != "NONE":
        raise Unsupported(f"post_transform {trees.post_transform} is not supported")
    if trees.is_classifier != card.is_classifier:
        raise Unsupported("the card's task does not match the tree ensemble")
    if not trees.is_classifier:
        if trees.aggregate not in ("SUM", "AVERAGE"):
            raise Unsupported(f"aggregate_function {trees.aggregate} is not supported")
        if trees.base.size > 1:
            raise Unsupported(f"{trees.base.size} base_values for one target")
        return "regression"
    if (trees.values < 0).any():
        raise Unsupported("a classifier with negative leaf weights")
    n_labels = len(trees.labels)
    if n_labels == 2 and trees.n_columns == 1 and not trees.base.size:
        return "binary"
    if n_labels > 2 and trees.n_columns == n_labels and trees.base.size in (0, n_labels):
        return "classes"
    raise Unsupported(f"{n_labels} class labels scored in {trees.n_columns} columns with {trees.base.size} base values")


def _children(trees: Trees) -> np.ndarray:
    """(nodes * 2) int32: [false child, true child] per node; a leaf points at itself, so
    a row that reached its leaf stays there while other trees are still being walked."""
    own = np.arange(len(trees.feature))
    leaf = trees.is_leaf
    children = np.empty((len(own), 2), dtype=np.int32)
    children[:, 0] = np.where(leaf, own, trees.false_child)
    children[:, 1] = np.where(leaf, own, trees.true_child)
    return children.reshape(-1)


def _depth(trees: Trees) -> int:
    """The most splits on any root-to-leaf path."""
    from .trees import Unsupported

    frontier, depth = trees.roots, 0
    while True:
        branches = frontier[~trees.is_leaf[frontier]]
        if not len(branches):
            return depth
        depth += 1
        if depth > len(trees.feature):
            raise Unsupported("the trees have a cycle")
        frontier = np.concatenate((trees.true_child[branches], trees.false_child[branches]))


def _layout(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    offsets, position = {}, 0
    for name, array in arrays.items():
        offsets[name] = {"dtype": array.dtype.name, "shape": list(array.shape), "offset": position}
        position += -(-array.nbytes // _ALIGN) * _ALIGN
    header = {**header, "arrays": offsets}
    text = json.dumps(header, separators=(",", ":")).encode()
    start = -(-(len(MAGIC) + 8 + len(text)) // _ALIGN) * _ALIGN
    text += b" " * (start - len(MAGIC) - 8 - len(text))
    out = bytearray(start + position)
    out[: len(MAGIC)] = MAGIC
    out[len(MAGIC) : len(MAGIC) + 8] = len(text).to_bytes(8, "little")
    out[len(MAGIC) + 8 : start] = text
    for name, array in arrays.items():
        at = start + offsets[name]["offset"]
        out[at : at + array.nbytes] = np.ascontiguousarray(array).tobytes()
    return bytes(out)


def open_forest(path: Path, onnx_sha256: str) -> Forest | None:
    """The forest at `path` if it was made from the ONNX bytes with this sha256; else
    None, with one log line saying why it is not used (no line when there is none)."""
    try:
        with path.open("rb") as fh:
            mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("forest %s not used, onnxruntime alone serves the model: %s", path, exc)
        return None
    try:
        forest = _read(mapping, onnx_sha256)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("forest %s not used, onnxruntime alone serves the model: %s", path, exc)
        return None
    return forest


def _read(mapping: mmap.mmap, onnx_sha256: str) -> Forest:
    if mapping[: len(MAGIC)] != MAGIC:
        raise ValueError("not a warmstart forest file")
    length = int.from_bytes(mapping[len(MAGIC) : len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8 + length
    header = json.loads(mapping[len(MAGIC) + 8 : start])
    if header.get("version") != VERSION:
        raise ValueError(f"forest format version {header.get('version')}, this server reads {VERSION}")
    if header.get("onnx_sha256") != onnx_sha256:
        raise ValueError(
            f"it was made from ONNX bytes with sha256 {header.get('onnx_sha256')}, not the served "
            f"model's {onnx_sha256} (stale: rewrite it with python -m func.model.forest MODEL.onnx)"
        )
    start = -(-start // _ALIGN) * _ALIGN
    arrays = {}
    for name, spec in header["arrays"].items():
        dtype = np.dtype(_DTYPES[spec["dtype"]])
        shape = tuple(int(n) for n in spec["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        offset = start + int(spec["offset"])
        if offset + count * dtype.itemsize > len(mapping):
            raise ValueError(f"array {name} runs past the end of the file (truncated?)")
        arrays[name] = np.frombuffer(mapping, dtype, count, offset).reshape(shape)
    _check(header, arrays)
    return Forest(header, arrays, mapping)


def _check(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Every index in range, so no row can read outside the arrays."""
    n_nodes = len(arrays["feature"])
    columns = {"binary": 1, "regression": 1}.get(header["kind"], len(header["labels"]))
    expected = {"threshold": (n_nodes,), "children": (2 * n_nodes,), "values": (n_nodes, columns)}
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise ValueError(f"array {name} has shape {arrays[name].shape}, expected {shape}")
    for name, high in (("roots", n_nodes), ("children", n_nodes), ("feature", header["n_features"])):
        array = arrays[name]
        if array.size and (array.min() < 0 or array.max() >= high):
            raise ValueError(f"array {name} holds an index outside 0..{high - 1}")
    if header["kind"] not in ("binary", "classes", "regression"):
        raise ValueError(f"unknown forest kind {header['kind']!r}")
    if header["mode"] != "mixed" and header["mode"] not in _COMPARE:
        raise ValueError(f"unknown split mode {header['mode']!r}")
    for name in ("missing_true", "modes"):
        if name in arrays and arrays[name].shape != (n_nodes,):
            raise ValueError(f"array {name} has shape {arrays[name].shape}, expected ({n_nodes},)")
    if header["mode"] == "mixed" and "modes" not in arrays:
        raise ValueError("mixed split modes without a modes array")


def forest_or_reason(onnx_bytes: bytes, onnx_sha256: str) -> bytes | str:
    """The forest file of these ONNX bytes, or why the model cannot have one."""
    from .onnx_reader import OnnxReadError
    from .trees import Unsupported

    try:
        return forest_bytes(onnx_bytes, onnx_sha256)
    except (Unsupported, OnnxReadError) as exc:
        return str(exc)


def write_forest(onnx_path: Path, onnx_bytes: bytes, onnx_sha256: str) -> str | None:
    """Write the forest beside an ONNX model just written; None when written, else the
    reason it cannot be (a stale forest beside the model is removed either way)."""
    target = forest_path(onnx_path)
    forest = forest_or_reason(onnx_bytes, onnx_sha256)
    if isinstance(forest, str):
        target.unlink(missing_ok=True)
        return forest
    write_atomically(target, forest)
    return None


def main(argv: list[str] | None = None) -> int:
    """python -m func.model.forest MODEL.onnx: write MODEL.forest beside it."""
    import hashlib
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].endswith(".onnx"):
        print("usage: python -m func.model.forest MODEL.onnx", file=sys.stderr)
        return 2
    onnx_path = Path(args[0])
    try:
        data = onnx_path.read_bytes()
    except OSError as exc:
        print(f"error: {onnx_path}: {exc.strerror}", file=sys.stderr)
        return 1
    why_not = write_forest(onnx_path, data, hashlib.sha256(data).hexdigest())
    if why_not is not None:
        print(f"error: {onnx_path}: no forest file, onnxruntime alone will serve it: {why_not}", file=sys.stderr)
        return 1
    print(f"wrote {forest_path(onnx_path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
