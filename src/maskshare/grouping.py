"""Groupings: give every token of every prompt a *slot* (shared mask and mean).

One interface for every kind (`make_grouping(cfg, seed)`):

    g = make_grouping(cfg, seed)
    g.fit(model, items)                  # items: the dataset items table (polars)
    a = g.assign(model, items)           # new prompts too, without refitting
    g.save(dir); g2 = load_grouping(dir)

Slot 0 is BOS in every grouping. `n_slots` counts every slot, BOS (and a pinned final
position) included. Kinds:

- `attention`: per-token attention features (`maskshare.features`), standardised,
  reduced by PCA, clustered (KMeans, agglomerative/Ward, Gaussian mixture or HDBSCAN).
  BOS is slot 0; with `pin_final` the last token of each prompt is slot 1; the clusters
  take the remaining slots, numbered by their mean position from the end (nearest the end
  first). `n_slots` fixed (total) or `"auto"`: chosen over `n_slots_range` by silhouette
  (any clusterer) or BIC (`gmm` only); HDBSCAN picks its own number. New tokens go to the
  nearest cluster centroid in the reduced space (the GMM's most likely component for
  `gmm`); `distance` is the Euclidean distance to that centroid there, and a token is
  out of distribution when it exceeds the 99th percentile of its slot's training
  distances.
- `template`: slot = position; every prompt must have the training length.
- `single`: BOS and one slot for everything else.
- `from-end`: BOS; the last k positions each own a slot (slot 1 = final); the rest share.
- `roles`: BOS; one slot per role seen in training; unseen roles go to `other`.

Saved as `grouping.json` (kind, config, slot names, small metadata) and
`grouping.safetensors` (arrays); no pickle.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskshare.artifacts import atomic_path, write_json_atomic
from maskshare.config import GroupingConfig, GroupingKind
from maskshare.errors import UserError
from maskshare.features import TokenFeatures, items_features

logger = logging.getLogger(__name__)

GROUPING_JSON = "grouping.json"
GROUPING_ARRAYS = "grouping.safetensors"
OOD_PERCENTILE = 99.0
MAX_AGGLOMERATIVE_FIT = 4000   # Ward linkage is O(n^2) memory: fit on a sample
MAX_SILHOUETTE = 3000


@dataclass
class Assignment:
    """Slots of the tokens of some prompts, aligned with each prompt's tokens."""

    slots: list[np.ndarray]      # int64 per prompt
    distance: list[np.ndarray]   # float64 per prompt; NaN where not applicable
    ood_fraction: float          # share of tokens with a distance beyond the training range
    prompt_ids: list[int]
    features_2d: np.ndarray | None = None  # [n_tokens, 2] projection (attention grouping)

    def flat_slots(self) -> np.ndarray:
        return np.concatenate(self.slots) if self.slots else np.zeros(0, np.int64)

    def flat_distance(self) -> np.ndarray:
        return np.concatenate(self.distance) if self.distance else np.zeros(0)


def _token_lists(items) -> list[list[int]]:
    if "tokens" not in items.columns:
        raise UserError("the items table has no 'tokens' column")
    return [list(t) for t in items["tokens"].to_list()]


def _prompt_ids(items) -> list[int]:
    if "prompt_id" in items.columns:
        return [int(x) for x in items["prompt_id"].to_list()]
    return list(range(items.height))


def _no_distance(slots: list[np.ndarray], items) -> Assignment:
    return Assignment(slots, [np.full(len(s), np.nan) for s in slots], 0.0, _prompt_ids(items))


class Grouping:
    """Base class: subclasses implement `_fit`, `_assign`, and their state."""

    kind: GroupingKind

    def __init__(self, cfg: GroupingConfig, seed: int = 0):
        self.cfg = cfg
        self.seed = int(seed)
        self.slot_names: list[str] = []
        self.fitted = False

    @property
    def n_slots(self) -> int:
        self._check_fitted()
        return len(self.slot_names)

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"the {self.kind} grouping is not fitted: call fit() first")

    def fit(self, model, items, features: TokenFeatures | None = None) -> Grouping:
        if items.height == 0:
            raise UserError("cannot fit a grouping on an empty items table")
        self._fit(model, items, features)
        self.fitted = True
        return self

    def assign(self, model, items, features: TokenFeatures | None = None) -> Assignment:
        self._check_fitted()
        return self._assign(model, items, features)

    def _fit(self, model, items, features):  # pragma: no cover - abstract
        raise NotImplementedError

    def _assign(self, model, items, features) -> Assignment:  # pragma: no cover - abstract
        raise NotImplementedError

    # state -----------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {}

    def _arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        pass

    def save(self, directory: str | Path) -> None:
        """Write `grouping.json` and `grouping.safetensors` into `directory` (atomically)."""
        from safetensors.numpy import save_file

        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.ascontiguousarray(v) for k, v in self._arrays().items()}
        with atomic_path(directory / GROUPING_ARRAYS) as tmp:
            save_file(arrays, str(tmp))
        write_json_atomic(directory / GROUPING_JSON, {
            "format": 1, "kind": str(self.kind), "seed": self.seed,
            "config": self.cfg.model_dump(mode="json"), "slot_names": self.slot_names,
            "meta": self._meta(),
        })


class SingleGrouping(Grouping):
    kind = GroupingKind.SINGLE

    def _fit(self, model, items, features):
        self.slot_names = ["bos", "all"]

    def _assign(self, model, items, features):
        slots = [np.where(np.arange(len(t)) == 0, 0, 1).astype(np.int64)
                 for t in _token_lists(items)]
        return _no_distance(slots, items)


class TemplateGrouping(Grouping):
    kind = GroupingKind.TEMPLATE

    def _lengths_or_fail(self, items, what: str) -> set[int]:
        lengths = {len(t) for t in _token_lists(items)}
        if len(lengths) != 1:
            raise UserError(f"the template grouping needs prompts of one length; the {what} "
                            f"prompts have {len(lengths)} lengths ({sorted(lengths)[:6]}...): "
                            "use a templated dataset or another grouping kind")
        return lengths

    def _fit(self, model, items, features):
        (n,) = self._lengths_or_fail(items, "training")
        self.slot_names = ["bos"] + [f"pos{i}" for i in range(1, n)]

    def _assign(self, model, items, features):
        (n,) = self._lengths_or_fail(items, "given")
        if n != len(self.slot_names):
            raise UserError(f"the template grouping was fitted on {len(self.slot_names)}-token "
                            f"prompts; these have {n} tokens")
        return _no_distance([np.arange(n, dtype=np.int64) for _ in range(items.height)], items)


class FromEndGrouping(Grouping):
    kind = GroupingKind.FROM_END

    def _fit(self, model, items, features):
        k = self.cfg.from_end_k
        self.slot_names = ["bos"] + [f"end-{i}" for i in range(1, k + 1)] + ["rest"]

    def _assign(self, model, items, features):
        k = self.cfg.from_end_k
        out = []
        for t in _token_lists(items):
            n = len(t)
            from_end = n - 1 - np.arange(n)
            s = np.where(from_end < k, from_end + 1, k + 1)
            s[0] = 0
            out.append(s.astype(np.int64))
        return _no_distance(out, items)


class RolesGrouping(Grouping):
    kind = GroupingKind.ROLES
    OTHER = "other"

    def _fit(self, model, items, features):
        if "roles" not in items.columns:
            raise UserError("the roles grouping needs span labels: the items have no 'roles' "
                            "column")
        seen = sorted({r for rs in items["roles"].to_list() for r in rs[1:]} - {"bos"})
        if self.OTHER not in seen:
            seen.append(self.OTHER)
        self.slot_names = ["bos"] + seen

    def _assign(self, model, items, features):
        if "roles" not in items.columns:
            raise UserError("the roles grouping needs a 'roles' column in the items")
        index = {r: i for i, r in enumerate(self.slot_names)}
        other = index[self.OTHER]
        out = []
        for rs in items["roles"].to_list():
            s = np.array([other if r == "bos" else index.get(r, other) for r in rs],
                         dtype=np.int64)
            if len(s):
                s[0] = 0
            out.append(s)
        return _no_distance(out, items)


# --------------------------------------------------------------------------- attention

def _gmm_log_prob(x: np.ndarray, weights, means, prec_chol) -> np.ndarray:
    """log p(x, component) for a full-covariance Gaussian mixture: [n, k]."""
    n, d = x.shape
    out = np.empty((n, len(weights)))
    for j in range(len(weights)):
        y = (x - means[j]) @ prec_chol[j]
        out[:, j] = (-0.5 * (d * np.log(2 * np.pi) + np.sum(y * y, axis=1))
                     + np.sum(np.log(np.diag(prec_chol[j]))) + np.log(weights[j]))
    return out


class AttentionGrouping(Grouping):
    kind = GroupingKind.ATTENTION

    def __init__(self, cfg: GroupingConfig, seed: int = 0):
        super().__init__(cfg, seed)
        if not cfg.pin_bos:
            raise UserError("grouping.pin_bos: false is not supported: slot 0 is BOS in every "
                            "grouping (BOS is never ablated)")
        self.arrays: dict[str, np.ndarray] = {}
        self.meta: dict[str, Any] = {}

    @property
    def n_pinned(self) -> int:
        return 2 if self.cfg.pin_final else 1

    # features ---------------------------------------------------------------
    def features(self, model, items) -> TokenFeatures:
        return items_features(model, items, self.cfg.features, batch_size=self.cfg.batch_size)

    def _check_features(self, features: TokenFeatures, items) -> None:
        n = sum(len(t) for t in _token_lists(items))
        if len(features) != n:
            raise ValueError(f"features have {len(features)} rows for {n} tokens")
        if self.meta.get("feature_names") not in (None, features.names):
            raise UserError("these features differ from the ones the grouping was fitted on "
                            "(other layers or feature switches)")

    def _pinned_slot(self, f: TokenFeatures) -> np.ndarray:
        """-1 for clustered rows, else the pinned slot (0 BOS, 1 final)."""
        s = np.full(len(f), -1, dtype=np.int64)
        if self.cfg.pin_final:
            s[f.position == f.length - 1] = 1
        s[f.position == 0] = 0
        return s

    def reduce(self, matrix: np.ndarray) -> np.ndarray:
        """Standardise and project features into the fitted reduced (PCA) space."""
        a = self.arrays
        z = (matrix.astype(np.float64) - a["scaler_mean"]) / a["scaler_scale"]
        return (z - a["pca_mean"]) @ a["pca_components"].T

    def project_2d(self, features: TokenFeatures) -> np.ndarray:
        """First two PCA coordinates of every token (BOS and pinned rows too)."""
        r = self.reduce(features.matrix)
        if r.shape[1] == 1:
            r = np.concatenate([r, np.zeros_like(r)], axis=1)
        return r[:, :2]

    # fitting ----------------------------------------------------------------
    def _cluster(self, r: np.ndarray, k: int) -> tuple[np.ndarray, Any]:
        from sklearn.cluster import HDBSCAN, AgglomerativeClustering, KMeans
        from sklearn.mixture import GaussianMixture

        c = self.cfg.clusterer
        if c == "kmeans":
            m = KMeans(n_clusters=k, n_init=4, random_state=self.seed).fit(r)
            return m.labels_, m
        if c == "gmm":
            m = GaussianMixture(n_components=k, covariance_type="full", reg_covar=1e-3,
                                n_init=2, random_state=self.seed).fit(r)
            return m.predict(r), m
        if c == "agglomerative":
            tree = self._ward_tree(r)
            if tree is None:  # pragma: no cover - scipy is a scikit-learn dependency
                m = AgglomerativeClustering(n_clusters=k, linkage="ward").fit(r)
                return m.labels_, m
            from scipy.cluster.hierarchy import fcluster

            return fcluster(tree, k, criterion="maxclust").astype(np.int64) - 1, None
        if c == "hdbscan":
            min_size = max(5, len(r) // 200)
            m = HDBSCAN(min_cluster_size=min_size, min_samples=5, copy=True).fit(r)
            return m.labels_, m
        raise UserError(f"unknown clusterer {c!r}")  # pragma: no cover - config validates

    def _ward_tree(self, r: np.ndarray):
        """Ward linkage of `r`, computed once per fit and cut for every cluster count."""
        cached = getattr(self, "_tree", None)
        if cached is None or cached[0] is not r:
            try:
                from scipy.cluster.hierarchy import linkage
            except ImportError:  # pragma: no cover
                return None
            self._tree = (r, linkage(r, method="ward"))
        return self._tree[1]

    def _score(self, r: np.ndarray, labels: np.ndarray, model_obj) -> float:
        """Higher is better."""
        if self.cfg.score == "bic":
            return -float(model_obj.bic(r))
        from sklearn.metrics import silhouette_score

        if len(set(labels.tolist())) < 2:
            return -1.0
        rng = np.random.default_rng(self.seed)
        idx = rng.choice(len(r), min(len(r), MAX_SILHOUETTE), replace=False)
        if len(set(labels[idx].tolist())) < 2:
            return -1.0
        return float(silhouette_score(r[idx], labels[idx]))

    def _fit(self, model, items, features):
        from sklearn.decomposition import PCA

        cfg = self.cfg
        if cfg.score == "bic" and cfg.clusterer != "gmm" and cfg.n_slots == "auto":
            raise UserError("grouping.score: bic needs clusterer: gmm (or use silhouette)")
        f = features if features is not None else self.features(model, items)
        self._check_features(f, items)
        pinned = self._pinned_slot(f)
        x = f.matrix[pinned < 0].astype(np.float64)
        if len(x) < 2:
            raise UserError("too few tokens to cluster (every token is BOS or final)")
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-6] = 1.0
        z = (x - mean) / scale
        pc = cfg.pca_components
        if pc is None:
            pc = min(z.shape)
        elif isinstance(pc, int):
            pc = min(pc, *z.shape)
        # many more tokens than features: the covariance eigendecomposition is far cheaper
        # than an SVD of the data and gives the same components
        solver = "covariance_eigh" if z.shape[0] >= 4 * z.shape[1] else "auto"
        pca = PCA(n_components=pc, random_state=self.seed, svd_solver=solver).fit(z)
        self.arrays = {"scaler_mean": mean, "scaler_scale": scale,
                       "pca_mean": pca.mean_.astype(np.float64),
                       "pca_components": pca.components_.astype(np.float64)}
        r = (z - pca.mean_) @ pca.components_.T

        fit_idx = np.arange(len(r))
        if cfg.clusterer == "agglomerative" and len(r) > MAX_AGGLOMERATIVE_FIT:
            fit_idx = np.sort(np.random.default_rng(self.seed).choice(
                len(r), MAX_AGGLOMERATIVE_FIT, replace=False))
        rf = r[fit_idx]
        scores: dict[str, float] = {}
        if cfg.clusterer == "hdbscan":
            labels, obj = self._cluster(rf, 0)
        elif cfg.n_slots == "auto":
            lo, hi = cfg.n_slots_range
            best = None
            for total in range(max(lo, self.n_pinned + 2), hi + 1):
                k = total - self.n_pinned
                if k >= len(rf):
                    break
                lab, obj_k = self._cluster(rf, k)
                scores[str(total)] = s = self._score(rf, lab, obj_k)
                if best is None or s > best[0]:
                    best = (s, lab, obj_k)
            if best is None:
                raise UserError(f"grouping.n_slots_range {cfg.n_slots_range} leaves no cluster "
                                f"count to try for {len(rf)} tokens")
            _, labels, obj = best
        else:
            k = int(cfg.n_slots) - self.n_pinned
            if k < 1:
                raise UserError(f"grouping.n_slots = {cfg.n_slots} leaves no slot for clusters "
                                f"after {self.n_pinned} pinned slot(s): use at least "
                                f"{self.n_pinned + 1}")
            k = min(k, len(rf))
            labels, obj = self._cluster(rf, k)

        self._tree = None
        found = sorted(set(labels.tolist()) - {-1})
        if not found:  # hdbscan found only noise: one cluster
            labels = np.zeros(len(rf), dtype=np.int64)
            found = [0]
        cents = np.stack([rf[labels == c].mean(axis=0) for c in found])
        # number clusters by mean position from the end (nearest the end first)
        from_end = (f.length - 1 - f.position)[pinned < 0][fit_idx]
        order = sorted(range(len(found)),
                       key=lambda j: (float(from_end[labels == found[j]].mean()), j))
        cents = cents[order]
        self.arrays["centroids"] = cents
        if cfg.clusterer == "gmm":
            self.arrays["gmm_weights"] = obj.weights_[order].astype(np.float64)
            self.arrays["gmm_means"] = obj.means_[order].astype(np.float64)
            self.arrays["gmm_prec_chol"] = obj.precisions_cholesky_[order].astype(np.float64)
            self.arrays["centroids"] = self.arrays["gmm_means"]
        k = len(cents)
        pinned_names = ["bos", "final"] if cfg.pin_final else ["bos"]
        self.slot_names = pinned_names + [f"c{j}" for j in range(k)]
        # training range of distances per slot, from the predictor itself
        slot, dist = self._predict(r)
        thr = np.full(len(self.slot_names), np.inf)
        for s in range(self.n_pinned, len(self.slot_names)):
            d = dist[slot == s]
            if len(d):
                thr[s] = np.percentile(d, OOD_PERCENTILE)
        self.arrays["ood_threshold"] = thr
        self.meta = {"feature_names": f.names, "n_clusters": k, "auto_scores": scores,
                     "n_fit_tokens": int(len(rf)), "pca_dims": int(r.shape[1]),
                     "noise_fraction": float(np.mean(labels == -1))}
        logger.info("attention grouping: %d slots (%d clusters, %d PCA dims, %d tokens)",
                    len(self.slot_names), k, r.shape[1], len(r))

    def _predict(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cents = self.arrays["centroids"]
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2: no [n, k, d] temporary
        d2 = ((r * r).sum(1)[:, None] - 2.0 * (r @ cents.T) + (cents * cents).sum(1)[None, :])
        np.maximum(d2, 0.0, out=d2)
        if "gmm_weights" in self.arrays:
            lab = np.argmax(_gmm_log_prob(r, self.arrays["gmm_weights"], self.arrays["gmm_means"],
                                          self.arrays["gmm_prec_chol"]), axis=1)
        else:
            lab = np.argmin(d2, axis=1)
        dist = np.sqrt(d2[np.arange(len(r)), lab])
        return lab + self.n_pinned, dist

    def _assign(self, model, items, features):
        f = features if features is not None else self.features(model, items)
        self._check_features(f, items)
        pinned = self._pinned_slot(f)
        slot = pinned.copy()
        dist = np.full(len(f), np.nan)
        free = pinned < 0
        if free.any():
            s, d = self._predict(self.reduce(f.matrix[free]))
            slot[free] = s
            dist[free] = d
        thr = self.arrays["ood_threshold"]
        has = ~np.isnan(dist)
        ood = float(np.mean(dist[has] > thr[slot[has]])) if has.any() else 0.0
        bounds = np.cumsum([0] + [len(t) for t in _token_lists(items)])
        return Assignment([slot[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
                          [dist[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)], ood,
                          _prompt_ids(items), features_2d=self.project_2d(f))

    def _meta(self):
        return self.meta

    def _arrays(self):
        return self.arrays

    def _load_state(self, meta, arrays):
        self.meta = meta
        self.arrays = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}


KINDS: dict[GroupingKind, type[Grouping]] = {
    GroupingKind.ATTENTION: AttentionGrouping, GroupingKind.TEMPLATE: TemplateGrouping,
    GroupingKind.SINGLE: SingleGrouping, GroupingKind.FROM_END: FromEndGrouping,
    GroupingKind.ROLES: RolesGrouping,
}


def make_grouping(cfg: GroupingConfig, seed: int = 0) -> Grouping:
    return KINDS[GroupingKind(cfg.kind)](cfg, seed)


def load_grouping(directory: str | Path) -> Grouping:
    """Load a grouping written by `Grouping.save` (JSON + safetensors; no code executed)."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    p = directory / GROUPING_JSON
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read a grouping from {directory}: {e}") from None
    cfg = GroupingConfig.model_validate(doc["config"])
    g = make_grouping(cfg, doc.get("seed", 0))
    arrays = load_file(str(directory / GROUPING_ARRAYS)) if (directory / GROUPING_ARRAYS).exists() \
        else {}
    g.slot_names = list(doc["slot_names"])
    g._load_state(doc.get("meta", {}), arrays)
    g.fitted = True
    return g


# --------------------------------------------------------------------------- quality

def template_positions(items) -> np.ndarray | None:
    """Template-piece label of each non-BOS token, or None if the items are not templated.

    Equal lengths: the position. Otherwise (one phrasing, a subject span of varying length):
    position before the subject, one label for the subject span, position from the end after.
    """
    toks = _token_lists(items)
    lengths = {len(t) for t in toks}
    if len(lengths) == 1:
        return np.concatenate([np.arange(1, len(t)) for t in toks])
    templated = ("variant" in items.columns and set(items["variant"].to_list()) == {"templated"}) \
        or ("phrasing_id" in items.columns and items["phrasing_id"].n_unique() == 1)
    if not templated or "roles" not in items.columns:
        return None
    out = []
    for rs in items["roles"].to_list():
        n = len(rs)
        subj = [i for i, r in enumerate(rs) if r == "subject"]
        a, b = (subj[0], subj[-1]) if subj else (n, n)
        out += [i if i < a else (1000 if i <= b else 2000 + n - 1 - i) for i in range(1, n)]
    return np.asarray(out)


def _purity(labels: np.ndarray, truth: np.ndarray) -> float:
    total = 0
    for s in np.unique(labels):
        total += Counter(truth[labels == s].tolist()).most_common(1)[0][1]
    return total / len(labels) if len(labels) else float("nan")


def _measures(slots: np.ndarray, items, templ: np.ndarray | None) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score

    out: dict[str, Any] = {"n_prompts": items.height, "n_tokens": int(len(slots))}
    if templ is not None and len(templ) == len(slots):
        out["ari_template"] = float(adjusted_rand_score(templ, slots))
    if "roles" in items.columns:
        roles = np.asarray([r for rs in items["roles"].to_list() for r in rs[1:]])
        if len(roles) == len(slots) and len(roles):
            out["ari_roles"] = float(adjusted_rand_score(roles, slots))
            out["purity_roles"] = _purity(slots, roles)
    return out


def grouping_quality(grouping: Grouping, assignment: Assignment, items) -> dict[str, Any]:
    """Quality of an assignment, over non-BOS tokens.

    Keys: `n_slots`, `n_slots_used`, `ood_fraction`, `ari_template` (templated items),
    `ari_roles` and `purity_roles` (items with roles), and `by_split` with the same
    measures per value of the `split` column (and per split, the OOD fraction).
    """
    nonbos = [s[1:] for s in assignment.slots]
    flat = np.concatenate(nonbos) if nonbos else np.zeros(0, np.int64)
    out: dict[str, Any] = {"kind": str(grouping.kind), "n_slots": grouping.n_slots,
                           "n_slots_used": int(len(np.unique(flat))),
                           "ood_fraction": assignment.ood_fraction}
    out.update(_measures(flat, items, template_positions(items)))
    if "split" in items.columns and items["split"].n_unique() > 1:
        out["by_split"] = {}
        splits = items["split"].to_list()
        thr = getattr(grouping, "arrays", {}).get("ood_threshold")
        for sp in sorted(set(splits)):
            idx = [i for i, x in enumerate(splits) if x == sp]
            sub = items[idx]
            m = _measures(np.concatenate([nonbos[i] for i in idx]), sub,
                          template_positions(sub))
            d = np.concatenate([assignment.distance[i] for i in idx])
            s = np.concatenate([assignment.slots[i] for i in idx])
            has = ~np.isnan(d)
            m["ood_fraction"] = float(np.mean(d[has] > thr[s[has]])) \
                if thr is not None and has.any() else 0.0
            out["by_split"][sp] = m
    return out


def stability(cfg: GroupingConfig, model, items, seeds: tuple[int, int] = (0, 1),
              features: TokenFeatures | None = None) -> float:
    """ARI between the non-BOS slots of two fits that differ only in their seed."""
    from sklearn.metrics import adjusted_rand_score

    labs = []
    for seed in seeds:
        g = make_grouping(cfg, seed).fit(model, items, features)
        a = g.assign(model, items, features)
        labs.append(np.concatenate([s[1:] for s in a.slots]))
    return float(adjusted_rand_score(labs[0], labs[1]))
