"""The trees of an ONNX TreeEnsembleClassifier/Regressor node, as index arrays.

One reading serves both users of the trees: the mapped forest that answers while
onnxruntime builds its session (func/model/forest.py) and exact TreeSHAP
(func/explain/tree_shap.py). Nodes keep the order of the node's attributes; children
are node positions, not (tree id, node id) pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .onnx_reader import Graph, Node

ML_DOMAIN = "ai.onnx.ml"
TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
LEAF = b"LEAF"
BRANCH_MODES = (b"BRANCH_LEQ", b"BRANCH_LT", b"BRANCH_GTE", b"BRANCH_GT")


class Unsupported(ValueError):
    """The model is not a tree ensemble its reader can use; the message says why."""


@dataclass(frozen=True)
class Trees:
    """Per node: split feature, threshold, mode, children (-1 on leaves), and the
    summed leaf weights per score column; per tree: its root, in tree id order."""

    op_type: str
    feature: np.ndarray  # int64 (nodes,)
    threshold: np.ndarray  # float64 (nodes,), the float32 thresholds exactly
    modes: list[bytes]
    true_child: np.ndarray  # int64 (nodes,)
    false_child: np.ndarray  # int64 (nodes,)
    missing_true: np.ndarray  # bool (nodes,): a NaN takes the true branch
    roots: np.ndarray  # int64 (trees,)
    values: np.ndarray  # float64 (nodes, columns): leaf weights, summed per column
    weights_per_leaf: int  # the most weights one leaf has for one column
    base: np.ndarray  # float64 base_values (may be empty)
    post_transform: str
    aggregate: str  # regressors: SUM, AVERAGE, MIN, MAX; classifiers: SUM
    labels: list[int] | list[str]  # classifiers' class labels
    covers: np.ndarray | None  # nodes_hitrates, when every node has one

    @property
    def is_classifier(self) -> bool:
        return self.op_type == "TreeEnsembleClassifier"

    @property
    def is_leaf(self) -> np.ndarray:
        return self.true_child < 0

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    @property
    def n_columns(self) -> int:
        return self.values.shape[1]


def find_tree_ensemble(graph: Graph) -> Node:
    """The graph's one TreeEnsemble node, which must read the model input itself."""
    trees = [n for n in graph.nodes if n.domain == ML_DOMAIN and n.op_type in TREE_OPS]
    if len(trees) != 1:
        raise Unsupported(f"the graph has {len(trees)} TreeEnsemble nodes, not one")
    node = trees[0]
    if not node.inputs or not graph.inputs or node.inputs[0] != graph.inputs[0]:
        raise Unsupported("the tree ensemble does not read the model input directly (a preprocessing step?)")
    return node


def read_trees(node: Node, n_features: int) -> Trees:
    """The node's trees; Unsupported if a split mode, feature index or reference is not
    one these arrays can hold."""
    attrs = node.attributes
    tree_ids = _ints(attrs, "nodes_treeids")
    node_ids = _ints(attrs, "nodes_nodeids")
    features = _ints(attrs, "nodes_featureids")
    thresholds = _floats(attrs, "nodes_values")
    true_ids = _ints(attrs, "nodes_truenodeids")
    false_ids = _ints(attrs, "nodes_falsenodeids")
    modes = attrs.get("nodes_modes")
    n_nodes = len(tree_ids)
    if not isinstance(modes, list) or len(modes) != n_nodes:
        raise Unsupported("the tree ensemble has no readable nodes_modes")
    if not (len(node_ids) == len(features) == len(thresholds) == len(true_ids) == len(false_ids) == n_nodes):
        raise Unsupported("the tree ensemble's nodes_* attributes differ in length")
    unknown = {m for m in modes if m != LEAF and m not in BRANCH_MODES}
    if unknown:
        raise Unsupported(f"split modes {sorted(m.decode() for m in unknown)} are not supported")
    is_leaf = np.array([m == LEAF for m in modes], dtype=bool)
    if features.size and (features[~is_leaf].min(initial=0) < 0 or features[~is_leaf].max(initial=0) >= n_features):
        raise Unsupported(f"a split uses a feature index outside 0..{n_features - 1}")

    # (tree id, node id) -> position, through one sorted int64 key per node.
    stride = int(node_ids.max(initial=0)) + 1
    keys = tree_ids * stride + node_ids
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if n_nodes and np.any(sorted_keys[1:] == sorted_keys[:-1]):
        raise Unsupported("a (tree id, node id) pair names two nodes")

    def positions(trees: np.ndarray, nodes: np.ndarray, what: str) -> np.ndarray:
        wanted = trees * stride + nodes
        at = np.searchsorted(sorted_keys, wanted)
        found = (nodes >= 0) & (nodes < stride) & (at < n_nodes)
        found[found] &= sorted_keys[at[found]] == wanted[found]
        if not found.all():
            bad = int(np.flatnonzero(~found)[0])
            raise Unsupported(f"{what} in tree {int(trees[bad])} names node {int(nodes[bad])}, which does not exist")
        return order[at]

    branch = ~is_leaf
    true_child = np.full(n_nodes, -1, dtype=np.int64)
    false_child = np.full(n_nodes, -1, dtype=np.int64)
    true_child[branch] = positions(tree_ids[branch], true_ids[branch], "a split")
    false_child[branch] = positions(tree_ids[branch], false_ids[branch], "a split")
    is_child = np.zeros(n_nodes, dtype=bool)
    is_child[true_child[branch]] = True
    is_child[false_child[branch]] = True
    roots = np.flatnonzero(~is_child)
    roots = roots[np.argsort(tree_ids[roots], kind="stable")]
    if len(np.unique(tree_ids[roots])) != len(roots) or len(roots) != len(np.unique(tree_ids)):
        raise Unsupported("a tree of the ensemble does not have exactly one root")

    missing = _ints(attrs, "nodes_missing_value_tracks_true", required=False)
    missing_true = missing.astype(bool) if len(missing) == n_nodes else np.zeros(n_nodes, dtype=bool)
    covers = attrs.get("nodes_hitrates")
    values, weights_per_leaf = _leaf_values(node, is_leaf, positions)
    base_values = attrs.get("base_values")
    base = base_values.astype(np.float64) if isinstance(base_values, np.ndarray) else np.zeros(0)
    labels: list[int] | list[str] = _ints(attrs, "classlabels_int64s", required=False).tolist()
    if not labels:
        labels = [s.decode("utf-8", "replace") for s in attrs.get("classlabels_strings") or []]
    return Trees(
        op_type=node.op_type,
        feature=np.where(is_leaf, 0, features),
        threshold=thresholds,
        modes=modes,
        true_child=true_child,
        false_child=false_child,
        missing_true=missing_true,
        roots=roots,
        values=values,
        weights_per_leaf=weights_per_leaf,
        base=base,
        post_transform=text(attrs.get("post_transform", b"NONE")),
        aggregate=text(attrs.get("aggregate_function", b"SUM")),
        labels=labels,
        covers=covers if isinstance(covers, np.ndarray) and len(covers) == n_nodes else None,
    )


def _leaf_values(
    node: Node, is_leaf: np.ndarray, positions: Callable[[np.ndarray, np.ndarray, str], np.ndarray]
) -> tuple[np.ndarray, int]:
    """(nodes, columns) leaf weights summed per column, and the most weights a leaf has
    for one column."""
    attrs = node.attributes
    prefix = "class" if node.op_type == "TreeEnsembleClassifier" else "target"
    tree_ids = _ints(attrs, f"{prefix}_treeids")
    node_ids = _ints(attrs, f"{prefix}_nodeids")
    column_ids = _ints(attrs, f"{prefix}_ids")
    weights = _floats(attrs, f"{prefix}_weights")
    if prefix == "target" and int(attrs.get("n_targets", 1)) != 1:
        raise Unsupported("regressors with several targets are not supported")
    if column_ids.size and column_ids.min() < 0:
        raise Unsupported(f"a negative {prefix}_ids entry")
    n_columns = int(column_ids.max()) + 1 if column_ids.size else 1
    at = positions(tree_ids, node_ids, f"a {prefix} weight") if tree_ids.size else tree_ids
    if not np.all(is_leaf[at]):
        bad = int(np.flatnonzero(~is_leaf[at])[0])
        raise Unsupported(f"a {prefix} weight names tree {int(tree_ids[bad])} node {int(node_ids[bad])}, not a leaf")
    values = np.zeros((len(is_leaf), n_columns))
    np.add.at(values, (at, column_ids), weights)
    slots = at * n_columns + column_ids
    most = int(np.bincount(slots).max()) if slots.size else 0
    return values, most


def _ints(attrs: dict, name: str, required: bool = True) -> np.ndarray:
    value = attrs.get(name)
    if isinstance(value, np.ndarray) and value.dtype.kind == "i":
        return value
    if required:
        raise Unsupported(f"the tree ensemble has no readable {name} attribute")
    return np.zeros(0, np.int64)


def _floats(attrs: dict, name: str) -> np.ndarray:
    value = attrs.get(name)
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value
    raise Unsupported(f"the tree ensemble has no readable {name} attribute (stored as a tensor?)")


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
