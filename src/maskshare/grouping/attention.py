"""The attention grouping: slots are clusters of per-token attention features.

Features (`maskshare.grouping.features`) are standardised (`StandardScaler`, near-constant columns
left unscaled), reduced (`PCA`) and clustered (KMeans, agglomerative/Ward, Gaussian mixture
or HDBSCAN). BOS is slot 0; with `pin_final` the last token of each prompt is slot 1 (with
`pin_last` k, the last k positions take slots 1..k, like `from-end`, and only the tokens
before them are clustered); the clusters take the remaining slots, numbered by their mean
position from the end (nearest the end first). `n_slots` is fixed (total) or `"auto"`: chosen over `n_slots_range` by
silhouette (any clusterer) or BIC (`gmm` only); HDBSCAN picks its own number.

New tokens get their slot from a fitted predictor, without refitting: the Gaussian mixture
itself (`predict`, the most likely component) for `gmm`; otherwise a 1-nearest-neighbour
classifier over the cluster centroids (the mean of each cluster's training tokens in the
reduced space). `distance` is the Euclidean distance to the slot's centroid (the
component's mean for `gmm`) in the reduced space; a token is out of distribution when it
exceeds the 99th percentile of its slot's training distances. Such a token keeps that
slot (`ood_fallback: nearest`) or, with `ood_fallback: position`, takes the cluster whose
training tokens' mean position from the end is nearest its own.

The scaler, PCA and predictor are saved as they are, in `grouping.skops`.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from maskshare.config import GroupingConfig, GroupingKind
from maskshare.errors import UserError
from maskshare.grouping.base import Assignment, Grouping, prompt_ids, token_lists
from maskshare.grouping.features import TokenFeatures, items_features
from maskshare.grouping.persist import dump_fitted, load_fitted

logger = logging.getLogger(__name__)

GROUPING_SKOPS = "grouping.skops"
OOD_PERCENTILE = 99.0
MAX_AGGLOMERATIVE_FIT = 4000   # Ward linkage is O(n^2) memory: fit on a sample
MAX_SILHOUETTE = 3000
MIN_SCALE = 1e-6  # columns with a smaller spread are float noise: centred, not amplified
# the only types a grouping file may hold beyond skops' default-trusted ones
TRUSTED_TYPES = ("sklearn.preprocessing._data.StandardScaler",
                 "sklearn.decomposition._pca.PCA",
                 "sklearn.mixture._gaussian_mixture.GaussianMixture",
                 "sklearn.neighbors._classification.KNeighborsClassifier")


class AttentionGrouping(Grouping):
    kind = GroupingKind.ATTENTION
    title = "attention slots"
    needs_features = True
    seeded = True
    fitted_state = True

    def __init__(self, cfg: GroupingConfig, seed: int = 0):
        super().__init__(cfg, seed)
        if not cfg.pin_bos:
            raise UserError("grouping.pin_bos: false is not supported: slot 0 is BOS in every "
                            "grouping (BOS is never ablated)")
        self.scaler = self.pca = self.predictor = None
        self.cluster_of_label: np.ndarray | None = None  # predictor label -> cluster number
        self.ood_threshold: np.ndarray | None = None     # per slot; inf for pinned slots
        self._centroids: np.ndarray | None = None
        self._tree = None
        self.cluster_from_end: np.ndarray | None = None  # mean log1p(from end) per cluster

    @property
    def n_pinned(self) -> int:
        return self.cfg.n_pinned_slots

    @property
    def centroids(self) -> np.ndarray:
        """[clusters, dims] cluster centres in the reduced space, in cluster order (the
        centres the 1-NN predictor was fitted on; the components' means for `gmm`)."""
        return self._centroids

    # features ---------------------------------------------------------------
    def features(self, model, items) -> TokenFeatures:
        return items_features(model, items, self.cfg.features, batch_size=self.cfg.batch_size)

    def _check_features(self, features: TokenFeatures, items) -> None:
        n = sum(len(t) for t in token_lists(items))
        if len(features) != n:
            raise ValueError(f"features have {len(features)} rows for {n} tokens")
        if self.meta.get("feature_names") not in (None, features.names):
            raise UserError("these features differ from the ones the grouping was fitted on "
                            "(other layers or feature switches)")

    def _pinned_slot(self, f: TokenFeatures) -> np.ndarray:
        """-1 for clustered rows, else the pinned slot (0 BOS, 1 final)."""
        s = np.full(len(f), -1, dtype=np.int64)
        from_end = f.length - 1 - f.position
        near_end = from_end < self.n_pinned - 1     # pin_last k: from_end 0..k-1 -> 1..k
        s[near_end] = from_end[near_end] + 1
        s[f.position == 0] = 0
        return s

    def reduce(self, matrix: np.ndarray) -> np.ndarray:
        """Standardise and project features into the fitted reduced (PCA) space."""
        return self.pca.transform(self._weigh(self.scaler.transform(matrix.astype(np.float64))))

    def _weigh(self, z: np.ndarray) -> np.ndarray:
        """Standardised features with the position-from-end column scaled by
        `features.position_weight` (the last column, when present)."""
        fc = self.cfg.features
        if fc.position_from_end and fc.position_weight != 1.0:
            z = z.copy()
            z[:, -1] *= fc.position_weight
        return z

    def project_2d(self, features: TokenFeatures) -> np.ndarray:
        """First two PCA coordinates of every token (BOS and pinned rows too)."""
        r = self.reduce(features.matrix)
        if r.shape[1] == 1:
            r = np.concatenate([r, np.zeros_like(r)], axis=1)
        return r[:, :2]

    # fitting ----------------------------------------------------------------
    def _fit(self, model, items, features):
        cfg = self.cfg
        if cfg.score == "bic" and cfg.clusterer != "gmm" and cfg.n_slots == "auto":
            raise UserError("grouping.score: bic needs clusterer: gmm (or use silhouette)")
        f = features if features is not None else self.features(model, items)
        self._check_features(f, items)
        pinned = self._pinned_slot(f)
        x = f.matrix[pinned < 0].astype(np.float64)
        if len(x) < 2:
            pinned = ("BOS or one of the last " + str(cfg.pin_last) + " positions (pin_last)"
                      if cfg.pin_last else "BOS or final")
            raise UserError(f"too few tokens to cluster (every token is {pinned})")
        r = self._fit_reducer(x)
        fit_idx = np.arange(len(r))
        if cfg.clusterer == "agglomerative" and len(r) > MAX_AGGLOMERATIVE_FIT:
            fit_idx = np.sort(np.random.default_rng(self.seed).choice(
                len(r), MAX_AGGLOMERATIVE_FIT, replace=False))
        rf = r[fit_idx]
        labels, obj, scores = self._choose_clusters(rf)
        self._tree = None
        from_end = (f.length - 1 - f.position)[pinned < 0][fit_idx]
        k = self._fit_predictor(rf, labels, obj, from_end)
        self.cluster_from_end = self._cluster_positions(r, (f.length - 1 - f.position)[pinned < 0])
        pinned_names = ["bos"] + (["final"] if cfg.pin_final else [])
        pinned_names += [f"end-{i}" for i in range(2, self.n_pinned)]
        self.slot_names = pinned_names + [f"c{j}" for j in range(k)]
        # training range of distances per slot, from the predictor itself
        slot, dist = self.predict(r)
        thr = np.full(len(self.slot_names), np.inf)
        for s in range(self.n_pinned, len(self.slot_names)):
            d = dist[slot == s]
            if len(d):
                thr[s] = np.percentile(d, OOD_PERCENTILE)
        self.ood_threshold = thr
        self.meta = {"feature_names": f.names, "n_clusters": k, "auto_scores": scores,
                     "n_fit_tokens": int(len(rf)), "pca_dims": int(r.shape[1]),
                     "noise_fraction": float(np.mean(labels == -1))}
        logger.info("attention grouping: %d slots (%d clusters, %d PCA dims, %d tokens)",
                    len(self.slot_names), k, r.shape[1], len(r))

    def _fit_reducer(self, x: np.ndarray) -> np.ndarray:
        """Fit the scaler and PCA on the clustered tokens; return their reduced features."""
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        self.scaler = StandardScaler().fit(x)
        # a column whose spread is float noise would become a unit-variance noise dimension
        self.scaler.scale_[self.scaler.scale_ < MIN_SCALE] = 1.0
        z = self._weigh(self.scaler.transform(x))
        pc = self.cfg.pca_components
        if pc is None:
            pc = min(z.shape)
        elif isinstance(pc, int):
            pc = min(pc, *z.shape)
        # many more tokens than features: the covariance eigendecomposition is far cheaper
        # than an SVD of the data and gives the same components
        solver = "covariance_eigh" if z.shape[0] >= 4 * z.shape[1] else "auto"
        self.pca = PCA(n_components=pc, random_state=self.seed, svd_solver=solver).fit(z)
        return self.pca.transform(z)

    def _choose_clusters(self, rf: np.ndarray) -> tuple[np.ndarray, Any, dict[str, float]]:
        """Cluster labels of `rf` (-1: HDBSCAN noise), the fitted clusterer, auto scores."""
        cfg = self.cfg
        scores: dict[str, float] = {}
        if cfg.clusterer == "hdbscan":
            labels, obj = self._cluster(rf, 0)
            return labels, obj, scores
        if cfg.n_slots != "auto":
            k = int(cfg.n_slots) - self.n_pinned
            if k < 1:
                raise UserError(f"grouping.n_slots = {cfg.n_slots} leaves no slot for clusters "
                                f"after {self.n_pinned} pinned slot(s): use at least "
                                f"{self.n_pinned + 1}")
            labels, obj = self._cluster(rf, min(k, len(rf)))
            return labels, obj, scores
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
        return best[1], best[2], scores

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
        if self._tree is None or self._tree[0] is not r:
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

    def _fit_predictor(self, rf: np.ndarray, labels: np.ndarray, obj, from_end) -> int:
        """Number the clusters (nearest the end first) and fit the predictor; return k."""
        from sklearn.neighbors import KNeighborsClassifier

        found = sorted(set(labels.tolist()) - {-1})
        if not found:  # hdbscan found only noise: one cluster
            labels = np.zeros(len(rf), dtype=np.int64)
            found = [0]
        order = sorted(range(len(found)),
                       key=lambda j: (float(from_end[labels == found[j]].mean()), j))
        number = {found[j]: i for i, j in enumerate(order)}  # clusterer label -> cluster
        if self.cfg.clusterer == "gmm":
            # a component no training token fell into still predicts: it gets the last numbers
            for c in range(obj.n_components):
                number.setdefault(c, len(number))
            self.predictor = obj
            self.cluster_of_label = np.array([number[c] for c in range(obj.n_components)])
            self._centroids = obj.means_[np.argsort(self.cluster_of_label, kind="stable")]
        else:
            self._centroids = np.stack([rf[labels == found[j]].mean(axis=0) for j in order])
            k = len(self._centroids)
            with warnings.catch_warnings():
                # one sample per class is the point here, not a regression target in disguise
                warnings.filterwarnings("ignore", "The number of unique classes", UserWarning)
                self.predictor = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(
                    self._centroids, np.arange(k))
            self.cluster_of_label = np.arange(k)
        return len(self._centroids)

    def _cluster_positions(self, r: np.ndarray, from_end: np.ndarray) -> np.ndarray:
        """[clusters]: mean log1p(position from the end) of each cluster's training tokens
        (as the predictor assigns them; NaN for a cluster that gets none)."""
        slot, _ = self.predict(r)
        c = slot - self.n_pinned
        out = np.full(len(self._centroids), np.nan)
        for j in range(len(out)):
            if (c == j).any():
                out[j] = float(np.log1p(from_end[c == j]).mean())
        return out

    def _position_fallback(self, from_end: np.ndarray) -> np.ndarray:
        """`ood_fallback: position`: the slot of the cluster whose training tokens' mean
        log1p(position from the end) is nearest each token's own."""
        if self.cluster_from_end is None:
            raise UserError("this grouping was fitted before ood_fallback existed: refit it")
        gap = np.abs(self.cluster_from_end[None, :] - np.log1p(from_end)[:, None])
        return np.nanargmin(np.where(np.isnan(gap), np.inf, gap), axis=1) + self.n_pinned

    # assigning --------------------------------------------------------------
    def predict(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slot, distance to the slot's centre) of reduced features `r` [n, dims]."""
        if self.cfg.clusterer == "gmm":
            label = self.predictor.predict(r)
            dist = np.linalg.norm(r - self.predictor.means_[label], axis=1)
        else:
            d, i = self.predictor.kneighbors(r, n_neighbors=1)
            label, dist = i[:, 0], d[:, 0]
        return self.cluster_of_label[label] + self.n_pinned, dist

    def _assign(self, model, items, features):
        f = features if features is not None else self.features(model, items)
        self._check_features(f, items)
        pinned = self._pinned_slot(f)
        slot = pinned.copy()
        dist = np.full(len(f), np.nan)
        free = pinned < 0
        if free.any():
            s, d = self.predict(self.reduce(f.matrix[free]))
            slot[free] = s
            dist[free] = d
        thr = self.ood_threshold
        has = ~np.isnan(dist)
        far = np.zeros(len(f), dtype=bool)
        far[has] = dist[has] > thr[slot[has]]
        ood = float(np.mean(far[has])) if has.any() else 0.0
        if self.cfg.ood_fallback == "position" and far.any():
            slot[far] = self._position_fallback((f.length - 1 - f.position)[far])
        bounds = np.cumsum([0] + [len(t) for t in token_lists(items)])
        pairs = list(zip(bounds[:-1], bounds[1:], strict=True))
        return Assignment([slot[a:b] for a, b in pairs], [dist[a:b] for a, b in pairs], ood,
                          prompt_ids(items), features_2d=self.project_2d(f))

    # state ------------------------------------------------------------------
    def _save_state(self, directory: Path) -> None:
        dump_fitted({"scaler": self.scaler, "pca": self.pca, "predictor": self.predictor,
                     "cluster_of_label": self.cluster_of_label, "centroids": self._centroids,
                     "ood_threshold": self.ood_threshold,
                     "cluster_from_end": self.cluster_from_end}, directory / GROUPING_SKOPS)

    def _load_state(self, directory: Path) -> None:
        state = load_fitted(directory / GROUPING_SKOPS, TRUSTED_TYPES)
        self.scaler, self.pca, self.predictor = state["scaler"], state["pca"], state["predictor"]
        self.cluster_of_label = np.asarray(state["cluster_of_label"], dtype=np.int64)
        self._centroids = np.asarray(state["centroids"], dtype=np.float64)
        self.ood_threshold = np.asarray(state["ood_threshold"], dtype=np.float64)
        cfe = state.get("cluster_from_end")
        self.cluster_from_end = None if cfe is None else np.asarray(cfe, dtype=np.float64)
