"""Exact SHAP values of an ONNX tree ensemble, read from the TreeEnsemble node's attributes.

The method is path-dependent TreeSHAP (Lundberg, Erion, Lee 2018, "Consistent individualized
feature attribution for tree ensembles"; what shap.TreeExplainer does without data): a feature
missing from a coalition is integrated out by following both branches of a split on it,
weighted by the share of the training samples that went each way. Those shares need
each node's training sample count (its "cover"), which ONNX has a place for, the
TreeEnsemble attribute `nodes_hitrates` ("popularity of each node"), and which
scripts/export_onnx.py fills with scikit-learn's `weighted_n_node_samples`. We chose
this over interventional TreeSHAP with a background sample in the card because it needs
no training rows in the model file (only one number per node, next to the node itself),
its cost does not grow with a background sample (one row of the default forest: about a
millisecond), and it is what `shap.TreeExplainer` computes for a scikit-learn forest by
default, so the two agree to float precision.

The computation is vectorised over leaves rather than recursive over nodes. For one leaf
with value v, let the distinct features split on along its root path be d = 1..D; z_d is
the product of the cover ratios of the path's edges on feature d (how much of the
training data follows the path on d) and o_d is 1 if the explained row satisfies every
split on d along the path, else 0. The leaf adds v * prod_d (o_d if d in S else z_d) to
the value of a coalition S, a product game whose Shapley values are

    phi_i = v (o_i - z_i) sum_k k! (D-k-1)! / D! [t^k] prod_{j != i} (z_j + o_j t),

and a tree ensemble's SHAP values are the sums of its leaves' (the same identity
TreeSHAP's EXTEND/UNWIND track along a path). Leaves are padded to the longest path with
z = o = 1, a player that never changes the value, which leaves every other player's
Shapley value unchanged, so all leaves share one array shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import factorial

import numpy as np

from ..model.onnx_reader import Node
from ..model.trees import Trees, Unsupported, find_tree_ensemble, read_trees

__all__ = ["TreeExplanation", "TreeShap", "Unsupported", "find_tree_ensemble"]
# mode -> (compare with "<" rather than "<=", the true branch is where the comparison fails)
_BRANCH_MODES = {
    b"BRANCH_LEQ": (False, False),
    b"BRANCH_LT": (True, False),
    b"BRANCH_GT": (False, True),
    b"BRANCH_GTE": (True, True),
}
# A node's count equals its children's up to float32 rounding of large weighted counts.
_COVER_RTOL = 1e-4
# The space each post_transform leaves additive: the scores before it.
_OUTPUT_SPACES = {"NONE": "probability", "LOGISTIC": "log_odds", "SOFTMAX": "margin"}
# Rows explained per vectorised step: the unwinding arrays hold rows x leaves x depth
# floats (the default forest: 16 rows ~ 2 MB), big enough to amortise NumPy's per-call cost.
_CHUNK_ROWS = 16


@dataclass(frozen=True)
class TreeExplanation:
    """SHAP values of rows in the ensemble's raw-score space, one score column each."""

    attributions: np.ndarray  # (rows, features)
    base_values: np.ndarray  # (rows,)
    outputs: np.ndarray  # (rows,) base + attributions summed: the explained raw score


class TreeShap:
    """A tree ensemble's paths, covers and leaf values, laid out for `shap_values`."""

    def __init__(self, node: Node, n_features: int) -> None:
        trees = read_trees(node, n_features)
        self.is_classifier = trees.is_classifier
        self.post_transform = trees.post_transform
        supported = _OUTPUT_SPACES if self.is_classifier else ("NONE",)
        if self.post_transform not in supported:
            raise Unsupported(f"post_transform {self.post_transform} is not supported")
        covers = trees.covers
        if covers is None:
            raise Unsupported("the tree ensemble has no node sample counts (nodes_hitrates)")
        features, thresholds, modes = trees.feature, trees.threshold, trees.modes
        is_leaf = trees.is_leaf
        children = {i: (int(trees.true_child[i]), int(trees.false_child[i])) for i in np.flatnonzero(~is_leaf).tolist()}
        for i, (yes, no) in children.items():
            if not covers[i] > 0 or not np.isclose(covers[yes] + covers[no], covers[i], rtol=_COVER_RTOL):
                raise Unsupported(
                    "nodes_hitrates do not hold node sample counts (a node's count is not the sum of its "
                    "children's); export the model with scripts/export_onnx.py to store them"
                )
        roots = trees.roots.tolist()
        self.n_trees = len(roots)

        leaf_values, self.n_columns, self.base = _leaf_values(trees)
        self.n_labels = len(trees.labels)

        # Every root-to-leaf path: its edges as (parent node, took the true branch).
        leaves: list[int] = []
        paths: list[list[tuple[int, bool]]] = []
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(r, []) for r in reversed(roots)]
        while stack:
            i, path = stack.pop()
            if is_leaf[i]:
                leaves.append(i)
                paths.append(path)
            else:
                yes, no = children[i]
                stack.append((no, [*path, (i, False)]))
                stack.append((yes, [*path, (i, True)]))

        slots_per_leaf = [list(dict.fromkeys(int(features[i]) for i, _ in path)) for path in paths]
        depth = max(1, max(len(s) for s in slots_per_leaf))
        n_leaves = len(leaves)
        self.depth = depth
        self.n_features = n_features
        self.slot_feature = np.full((n_leaves, depth), n_features, dtype=np.int64)  # padding: a spare column
        self.zero = np.ones((n_leaves, depth))
        edge_slot, edge_feature, edge_threshold, edge_strict, edge_flip = [], [], [], [], []
        for leaf, (path, slots) in enumerate(zip(paths, slots_per_leaf)):
            self.slot_feature[leaf, : len(slots)] = slots
            for i, took_true in path:
                slot = slots.index(int(features[i]))
                child = children[i][0 if took_true else 1]
                self.zero[leaf, slot] *= covers[child] / covers[i]
                strict, true_if_false = _BRANCH_MODES[modes[i]]
                edge_slot.append(leaf * depth + slot)
                edge_feature.append(int(features[i]))
                edge_threshold.append(thresholds[i])
                edge_strict.append(strict)
                edge_flip.append(true_if_false == took_true)
        order = np.argsort(np.asarray(edge_slot, dtype=np.int64), kind="stable")
        slot_sorted = np.asarray(edge_slot, dtype=np.int64)[order]
        self.edge_feature = np.asarray(edge_feature, dtype=np.int64)[order]
        self.edge_threshold = np.asarray(edge_threshold, dtype=np.float64)[order]
        self.edge_strict = np.asarray(edge_strict, dtype=bool)[order]
        self.edge_flip = np.asarray(edge_flip, dtype=bool)[order]
        self.slot_starts = np.flatnonzero(np.r_[True, slot_sorted[1:] != slot_sorted[:-1]]) if len(order) else order
        self.slot_index = slot_sorted[self.slot_starts]
        self.leaf_values = leaf_values[leaves]
        self.expected = self.base + self.zero.prod(axis=1) @ self.leaf_values
        # onnxruntime's binary case: one score column s for two labels; the first label
        # scores 1 - s (non-negative weights, no transform) or -s (before the logistic).
        self.single_binary = self.is_classifier and self.n_columns == 1 and self.n_labels == 2
        if self.is_classifier and not self.single_binary and self.n_labels != self.n_columns:
            raise Unsupported(f"{self.n_columns} score columns for {self.n_labels} class labels")
        self._complement = 1.0 if self.post_transform == "NONE" and (self.leaf_values >= 0).all() else 0.0
        self.weights = np.array([factorial(k) * factorial(depth - k - 1) / factorial(depth) for k in range(depth)])

    @property
    def output_space(self) -> str:
        """What the explained scores are: class probabilities (a forest), log-odds (binary
        gradient boosting), softmax margins (multi-class boosting) or regression values."""
        return _OUTPUT_SPACES[self.post_transform] if self.is_classifier else "value"

    def class_scores(self, label_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(score column, sign, offset) per row: label k's explained score is
        sign * raw[column] + offset. A regressor has one column, label_index is ignored."""
        if not self.is_classifier:
            zeros = np.zeros(len(label_index), dtype=np.int64)
            return zeros, np.ones(len(label_index)), np.zeros(len(label_index))
        if self.single_binary:
            first = label_index == 0
            return np.zeros(len(label_index), dtype=np.int64), np.where(first, -1.0, 1.0), first * self._complement
        return label_index.astype(np.int64), np.ones(len(label_index)), np.zeros(len(label_index))

    def outputs(self, rows: np.ndarray) -> np.ndarray:
        """What onnxruntime outputs for these rows (class probabilities, or values with
        one column), recomputed from the trees: how the explainer checks its reading."""
        raw = self.raw_scores(rows)
        if not self.is_classifier:
            return raw
        columns, sign, offset = self.class_scores(np.arange(self.n_labels))
        scores = raw[:, columns] * sign + offset
        if self.post_transform == "LOGISTIC":
            return 1.0 / (1.0 + np.exp(-scores))
        if self.post_transform == "SOFTMAX":
            exp = np.exp(scores - scores.max(axis=1, keepdims=True))
            return exp / exp.sum(axis=1, keepdims=True)
        return scores

    def raw_scores(self, rows: np.ndarray) -> np.ndarray:
        """The ensemble's scores before post_transform, (rows, columns)."""
        reached = self._one_fractions(rows).reshape(len(rows), *self.zero.shape).prod(axis=2)
        return self.base + reached @ self.leaf_values

    def shap_values(self, rows: np.ndarray, columns: np.ndarray) -> TreeExplanation:
        """SHAP values of each row for its score column `columns[r]`."""
        parts = [
            self._shap_chunk(rows[s : s + _CHUNK_ROWS], columns[s : s + _CHUNK_ROWS])
            for s in range(0, len(rows), _CHUNK_ROWS)
        ]
        attributions = np.concatenate(parts)
        base_values = self.expected[columns]
        return TreeExplanation(attributions, base_values, base_values + attributions.sum(axis=1))

    def _one_fractions(self, rows: np.ndarray) -> np.ndarray:
        """o: 1 where a row satisfies every split on a slot's feature along the leaf's path,
        (rows, leaves * depth), padding slots 1."""
        values = rows[:, self.edge_feature].astype(np.float64)
        passes = np.where(self.edge_strict, values < self.edge_threshold, values <= self.edge_threshold)
        passes ^= self.edge_flip
        ones = np.ones((len(rows), self.zero.size))
        if len(self.slot_starts):
            ones[:, self.slot_index] = np.logical_and.reduceat(passes, self.slot_starts, axis=1)
        return ones

    def _shap_chunk(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        n_rows, (n_leaves, depth) = len(rows), self.zero.shape
        one = self._one_fractions(rows).reshape(n_rows, n_leaves, depth)
        zero = self.zero
        # poly[..., k]: coefficient of t^k in prod_j (z_j + o_j t), per row and leaf.
        poly = np.zeros((n_rows, n_leaves, depth + 1))
        poly[..., 0] = 1.0
        for j in range(depth):
            shifted = poly[..., :-1] * one[..., j, None]
            poly *= zero[:, j, None]
            poly[..., 1:] += shifted
        # Divide out player i's factor and weight the coefficients: for o_i = 0 the factor
        # is the constant z_i; for o_i = 1 it is (z_i + t), divided top-down (stable, z <= 1).
        weights = self.weights
        weighted_if_out = (poly[..., :depth] @ weights)[..., None] / zero
        quotient = np.broadcast_to(poly[..., depth, None], one.shape).copy()
        weighted_if_in = weights[depth - 1] * quotient
        for k in range(depth - 1, 0, -1):
            quotient = poly[..., k, None] - zero * quotient
            weighted_if_in += weights[k - 1] * quotient
        gain = (one - zero) * np.where(one > 0, weighted_if_in, weighted_if_out)
        contribution = gain * self.leaf_values[:, columns].T[:, :, None]
        index = np.arange(n_rows)[:, None, None] * (self.n_features + 1) + self.slot_feature
        totals = np.bincount(index.ravel(), contribution.ravel(), minlength=n_rows * (self.n_features + 1))
        return totals.reshape(n_rows, self.n_features + 1)[:, : self.n_features]


def _leaf_values(trees: Trees) -> tuple[np.ndarray, int, np.ndarray]:
    """(node value matrix (nodes, columns), columns, base values), additive over trees."""
    values = trees.values
    if not trees.is_classifier:
        if trees.aggregate not in ("SUM", "AVERAGE"):
            raise Unsupported(f"aggregate_function {trees.aggregate} is not additive")
        if trees.aggregate == "AVERAGE":
            values = values / trees.n_trees
    base = np.zeros(trees.n_columns)
    if trees.base.size:
        if trees.base.size != trees.n_columns:
            raise Unsupported(f"{trees.base.size} base_values for {trees.n_columns} score columns")
        base = trees.base
    return values, trees.n_columns, base
