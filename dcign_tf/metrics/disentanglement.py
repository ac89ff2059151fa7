"""Disentanglement scores of a learned code against ground-truth factors: MIG, SAP and DCI.

The definitions follow google-research/disentanglement_lib (Locatello et al. 2019): its
``disentanglement_lib/evaluation/metrics/mig.py``, ``sap_score.py`` and ``dci.py``, in the settings
of its study configurations (``config/*/metric_configs/*.gin``). Pure numpy / scipy / scikit-learn,
no TensorFlow.

Shapes and conventions shared by every function here:

* ``codes``: ``[N, L]`` float, one row per image, one column per latent. Score the encoder's
  posterior MEAN, never a sample: sampling noise alone drives MIG towards zero.
  A 1-D array is read as a single latent, ``[N, 1]``.
* ``factors``: ``[N, K]`` float, the ground-truth generating factors of the same N images
  (e.g. azimuth in degrees, elevation, light angle). A 1-D array is read as a single factor.
* ``groups``: optional ``[N]`` labels (any numpy-comparable values) of the group each image came
  from, e.g. the record of grouped training data. SAP and DCI fit classifiers on a train split and
  score them on a test split; with ``groups`` every group lies wholly on one side, so no test
  image has a near-twin (same identity, same scene but one factor) among the training images.
  disentanglement_lib draws the two splits independently from a generator, which grouped test data
  cannot do; splitting by image would make informativeness optimistic. ``None``: every image is
  its own group.
* Wherever a factor has to be treated as discrete (MIG, discrete SAP, DCI), a factor with at most
  ``num_bins`` distinct values is taken as categorical (its values are the classes, as
  disentanglement_lib's discrete factors are); any other factor is cut into ``num_bins``
  equal-width bins with ``np.histogram`` edges.
* A factor that is constant over the N images carries no information: it is skipped, its
  per-factor entry is ``nan``, and a ``ValueError`` is raised if every factor is constant.
* Mutual information and entropies are in nats (natural log).
* Everything is deterministic given ``seed`` (also with ``n_jobs`` > 1: parallel fits are the
  same fits, each with its own seed).

The reference settings (the defaults) and the fast approximations (``fast=True`` for DCI,
``continuous=True`` for SAP) are described in ``dci`` and ``sap``; ``disentanglement_scores``
reports the approximations under their own key names (``dci_fast_*``, ``sap_correlation``), never
under the reference names.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from joblib import Parallel, delayed
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.svm import LinearSVC

__all__ = ["mig", "sap", "dci", "dci_many", "disentanglement_scores", "disentanglement_scores_many"]

DEFAULT_NUM_BINS = 20

# disentanglement_lib's sample sizes for SAP and DCI (its study configurations): 10,000 train and
# 5,000 test points. With fewer points, both shrink in the same 2 : 1 ratio.
REFERENCE_NUM_TRAIN = 10_000
REFERENCE_NUM_TEST = 5_000
# DCI's reference classifier: GradientBoostingClassifier's defaults (100 stages of depth-3 trees,
# one tree per class per stage), spelled out so that a scikit-learn default change cannot move scores.
REFERENCE_DCI_NUM_ESTIMATORS = 100
DCI_MAX_DEPTH = 3
# SAP's reference classifier: one-feature LinearSVC(C=0.01, class_weight="balanced").
SAP_SVM_C = 0.01
# The fast DCI approximation: every latent, but few points and two boosting stages; see ``dci``.
FAST_DCI_NUM_TRAIN = 500
FAST_DCI_NUM_TEST = 1_000
FAST_DCI_NUM_ESTIMATORS = 2


# ----------------------------------------------------------------------------- input handling


def _as_2d_float(array, name: str) -> np.ndarray:
    """Returns ``array`` as a finite float64 ``[N, D]`` matrix; 1-D input becomes ``[N, 1]``."""
    matrix = np.asarray(array, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [N, D]; got shape {matrix.shape}.")
    if matrix.shape[1] == 0:
        raise ValueError(f"{name} has no columns (shape {matrix.shape}).")
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return matrix


def _validate_codes_and_factors(codes, factors) -> tuple[np.ndarray, np.ndarray]:
    """Checks shapes and returns (codes [N, L], factors [N, K]) as float64."""
    codes = _as_2d_float(codes, "codes")
    factors = _as_2d_float(factors, "factors")
    if codes.shape[0] != factors.shape[0]:
        raise ValueError(
            "codes and factors must have the same number of rows (one per image); got "
            f"codes {codes.shape} and factors {factors.shape}."
        )
    if codes.shape[0] < 2:
        raise ValueError(f"need at least 2 points to score a code; got {codes.shape[0]}.")
    return codes, factors


def _is_constant(values: np.ndarray) -> np.ndarray:
    """Column-wise exact constancy of a ``[N, D]`` matrix, as a ``[D]`` bool array."""
    # Exact comparison, not a variance threshold: np.var of a constant column can be ~1e-33.
    return np.ptp(values, axis=0) == 0


def _scored_factor_mask(factors: np.ndarray) -> np.ndarray:
    """``[K]`` bool: which factors vary and can be scored; raises if none do."""
    varies = ~_is_constant(factors)
    if not varies.any():
        raise ValueError(
            f"every one of the {factors.shape[1]} factors is constant over the {factors.shape[0]} "
            "points; there is nothing to score the code against."
        )
    return varies


def _split_indices(
    num_points: int, num_train: int, num_test: int, rng: np.random.Generator, groups=None
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train / test index arrays (sorted), whole groups on each side.

    Groups are taken in a random order: the first ones go to the train split until it holds at
    least ``num_train`` points, the next ones to the test split until it holds at least
    ``num_test``. When fewer than ``num_train + num_test`` points exist, both sizes are first
    scaled down in the same ratio, so that every point is used. ``groups``: ``[N]`` labels, or
    ``None`` for one group per point (an image-level split of exactly the requested sizes).
    """
    if num_train < 1 or num_test < 1:
        raise ValueError(f"num_train and num_test must be >= 1; got {num_train}, {num_test}.")
    if groups is None:
        group_of_point = np.arange(num_points)
    else:
        groups = np.asarray(groups)
        if groups.shape != (num_points,):
            raise ValueError(f"groups must be 1-D with one label per point ({num_points}); got shape {groups.shape}.")
        group_of_point = np.unique(groups, return_inverse=True)[1].reshape(-1)
    if num_train + num_test > num_points:
        num_train = int(num_points * num_train / (num_train + num_test))
        num_test = num_points - num_train
    num_groups = int(group_of_point.max()) + 1
    if num_train < 2 or num_test < 1 or num_groups < 2:
        raise ValueError(f"too few points ({num_points}) or groups ({num_groups}) for a train / test split.")
    order = rng.permutation(num_groups)
    points_so_far = np.cumsum(np.bincount(group_of_point, minlength=num_groups)[order])
    # Groups needed to reach num_train points, leaving at least one group for the test split.
    train_groups = min(int(np.searchsorted(points_so_far, num_train)) + 1, num_groups - 1)
    test_groups = int(np.searchsorted(points_so_far, points_so_far[train_groups - 1] + num_test)) + 1 - train_groups
    test_groups = min(test_groups, num_groups - train_groups)
    side = np.full(num_groups, -1)
    side[order[:train_groups]] = 0
    side[order[train_groups:train_groups + test_groups]] = 1
    train_index = np.flatnonzero(side[group_of_point] == 0)
    test_index = np.flatnonzero(side[group_of_point] == 1)
    if train_index.size < 2:
        raise ValueError(f"too few points ({num_points}) for a train / test split.")
    return train_index, test_index


# ----------------------------------------------------------------------------- discretisation


def _histogram_discretize(values: np.ndarray, num_bins: int) -> np.ndarray:
    """Equal-width bin index of every entry, per column, as disentanglement_lib computes it.

    Args:
      values: ``[N, D]`` float.
      num_bins: bins per column; edges are ``np.histogram``'s (min to max of the column).

    Returns:
      ``[N, D]`` int64 in ``[0, num_bins)``. A constant column falls in a single bin.
    """
    bins = np.empty(values.shape, dtype=np.int64)
    for column in range(values.shape[1]):
        edges = np.histogram_bin_edges(values[:, column], bins=num_bins)
        # Digitising against all but the last edge puts the column maximum in the last bin.
        bins[:, column] = np.digitize(values[:, column], edges[:-1]) - 1
    return bins


def _discretize_factors(factors: np.ndarray, num_bins: int) -> np.ndarray:
    """Class label of every factor value: ``[N, K]`` float -> ``[N, K]`` int64.

    A factor with at most ``num_bins`` distinct values keeps them as its classes (numbered in
    sorted order); any other factor is cut into ``num_bins`` equal-width bins.
    """
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2; got {num_bins}.")
    labels = np.empty(factors.shape, dtype=np.int64)
    for column in range(factors.shape[1]):
        distinct, inverse = np.unique(factors[:, column], return_inverse=True)
        if distinct.size <= num_bins:
            labels[:, column] = inverse.reshape(-1)
        else:
            labels[:, column] = _histogram_discretize(factors[:, column : column + 1], num_bins)[:, 0]
    return labels


# ----------------------------------------------------------------------------- information


def _discrete_entropy(labels: np.ndarray) -> np.ndarray:
    """Entropy in nats of each column of a ``[N, D]`` non-negative int label matrix -> ``[D]``."""
    entropies = np.empty(labels.shape[1])
    for column in range(labels.shape[1]):
        counts = np.bincount(labels[:, column])
        probabilities = counts[counts > 0] / labels.shape[0]
        entropies[column] = -np.sum(probabilities * np.log(probabilities))
    return entropies


def _mutual_information_matrix(latent_bins: np.ndarray, factor_labels: np.ndarray) -> np.ndarray:
    """Plug-in mutual information (nats) of every (latent, factor) pair from joint histograms.

    Our own estimator on purpose (not sklearn's mutual_info_score), so scores cannot drift with
    library versions.

    Args:
      latent_bins: ``[N, L]`` non-negative int bin indices of the latents.
      factor_labels: ``[N, K]`` non-negative int class labels of the factors.

    Returns:
      ``[L, K]`` float64, MI[l, k] = sum_ab p(a, b) log(p(a, b) / (p(a) p(b))) >= 0.
    """
    num_points, num_latents = latent_bins.shape
    num_latent_bins = int(latent_bins.max()) + 1
    mutual_information = np.zeros((num_latents, factor_labels.shape[1]))
    for factor in range(factor_labels.shape[1]):
        labels = factor_labels[:, factor]
        num_classes = int(labels.max()) + 1
        cells_per_latent = num_latent_bins * num_classes
        # One bincount for all latents: latent l's joint histogram occupies its own block of cells.
        cell = latent_bins * num_classes + labels[:, None] + np.arange(num_latents) * cells_per_latent
        joint_counts = np.bincount(cell.ravel(), minlength=num_latents * cells_per_latent)
        joint_counts = joint_counts.reshape(num_latents, num_latent_bins, num_classes).astype(np.float64)
        latent_counts = joint_counts.sum(axis=2, keepdims=True)
        class_counts = joint_counts.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = joint_counts * np.log(joint_counts * num_points / (latent_counts * class_counts))
        mutual_information[:, factor] = np.where(joint_counts > 0, terms, 0.0).sum(axis=(1, 2)) / num_points
    # Rounding can leave an independent pair at -1e-17; MI is non-negative.
    return np.maximum(mutual_information, 0.0)


def _top_two_gap(scores: np.ndarray) -> np.ndarray:
    """Per column of ``[L, K]`` scores: best minus second best latent (second best is 0 if L == 1)."""
    ordered = np.sort(scores, axis=0)[::-1]
    second = ordered[1] if ordered.shape[0] > 1 else np.zeros(ordered.shape[1])
    return ordered[0] - second


def _mean_over_scored(per_factor: np.ndarray, scored: np.ndarray) -> float:
    """Mean of the per-factor scores of the factors that vary."""
    return float(np.mean(per_factor[scored]))


def _per_factor_list(per_factor: np.ndarray, scored: np.ndarray) -> list[float]:
    """Per-factor scores as Python floats, ``nan`` for skipped (constant) factors."""
    return [float(value) if keep else float("nan") for value, keep in zip(per_factor, scored)]


# ----------------------------------------------------------------------------- MIG


def mig(codes, factors, *, num_bins: int = DEFAULT_NUM_BINS) -> dict:
    """Mutual information gap (Chen et al. 2018), as disentanglement_lib computes it.

    Each latent is cut into ``num_bins`` equal-width bins (``np.histogram`` edges over its own
    range); each factor is discretised as the module docstring says. For every factor k,
    ``(MI(best latent; k) - MI(second-best latent; k)) / H(k)``; MIG is the mean over factors.

    Args:
      codes: ``[N, L]`` posterior means.
      factors: ``[N, K]`` ground-truth factor values.
      num_bins: histogram bins per latent (and per continuous factor).

    Returns:
      ``{"mig": float in [0, 1], "per_factor": [K floats]}`` (``nan`` for a constant factor).
      With a single latent the second-best MI is taken as 0.
    """
    codes, factors = _validate_codes_and_factors(codes, factors)
    scored = _scored_factor_mask(factors)
    factor_labels = _discretize_factors(factors, num_bins)
    mutual_information = _mutual_information_matrix(_histogram_discretize(codes, num_bins), factor_labels)
    factor_entropy = _discrete_entropy(factor_labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_factor = _top_two_gap(mutual_information) / factor_entropy
    return {"mig": _mean_over_scored(per_factor, scored), "per_factor": _per_factor_list(per_factor, scored)}


# ----------------------------------------------------------------------------- SAP


def _squared_correlation_matrix(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Squared Pearson correlation of every (latent, factor) pair: ``[L, K]``; 0 for a constant latent."""
    centred_codes = codes - codes.mean(axis=0)
    centred_factors = factors - factors.mean(axis=0)
    covariance = centred_codes.T @ centred_factors
    code_norms = np.sqrt(np.sum(centred_codes**2, axis=0))
    factor_norms = np.sqrt(np.sum(centred_factors**2, axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = covariance / np.outer(code_norms, factor_norms)
    varies = ~_is_constant(codes)
    # A latent that does not vary predicts nothing (disentanglement_lib scores it 0 too).
    correlation = np.where(varies[:, None], correlation, 0.0)
    return np.clip(np.nan_to_num(correlation) ** 2, 0.0, 1.0)


def _linear_svm_accuracy_matrix(
    train_codes: np.ndarray,
    train_labels: np.ndarray,
    test_codes: np.ndarray,
    test_labels: np.ndarray,
    scored: np.ndarray,
    seed: int,
) -> np.ndarray:
    """Test accuracy of a one-feature linear SVM per (latent, factor) pair: ``[L, K]``."""
    accuracy = np.zeros((train_codes.shape[1], train_labels.shape[1]))
    for factor in np.flatnonzero(scored):
        if np.unique(train_labels[:, factor]).size < 2:
            continue  # A single class in the train split: no classifier to fit; every latent scores 0.
        for latent in range(train_codes.shape[1]):
            # disentanglement_lib's classifier; primal solver (dual=False) as N >> 1 feature.
            classifier = LinearSVC(C=SAP_SVM_C, class_weight="balanced", dual=False, random_state=seed)
            classifier.fit(train_codes[:, latent : latent + 1], train_labels[:, factor])
            predictions = classifier.predict(test_codes[:, latent : latent + 1])
            accuracy[latent, factor] = np.mean(predictions == test_labels[:, factor])
    return accuracy


def sap(
    codes,
    factors,
    *,
    groups=None,
    continuous: bool = False,
    seed: int = 0,
    num_train: int = REFERENCE_NUM_TRAIN,
    num_test: int = REFERENCE_NUM_TEST,
    num_bins: int = DEFAULT_NUM_BINS,
) -> dict:
    """Separated attribute predictability (Kumar et al. 2018), as disentanglement_lib computes it.

    Every (latent, factor) pair gets a score on the held-out split. With ``continuous=False``
    (the default: the reference setting, ``continuous_factors=False`` in every one of
    disentanglement_lib's study configurations) it is the test accuracy of a one-feature linear
    SVM (``LinearSVC(C=0.01, class_weight="balanced")``, fit on the train split) predicting the
    factor's class, the factor discretised as the module docstring says (20 equal-width bins for
    a continuous factor). With ``continuous=True`` it is the squared Pearson correlation of the
    latent and the raw factor value (disentanglement_lib's ``continuous_factors=True`` variant,
    which computes it on its train sample; nothing is fitted, so that is the same estimator on a
    different random subset). Per factor, best minus second-best latent; SAP is the mean over
    factors. As in disentanglement_lib the latents are not standardised.

    Read the reference SAP on binned continuous factors with care. A one-vs-rest linear SVM on one
    feature can isolate only the two extreme classes of an ordered factor: every middle class is
    linearly inseparable from the rest, gets a near-constant decision function, and one of them
    wins everywhere in the middle. So with 20 bins even a perfect latent predicts about 2-3
    classes right, ~0.09 accuracy on a uniform factor, against ~0.05 for a useless latent: SAP
    ~0.04, the same as a randomly rotated code (measured, 3,000 points, 3 uniform factors: 0.037
    perfect, 0.040 rotated). It separates codes only for factors with few classes (binary: a
    perfect latent ~1.0 against ~0.5, SAP ~0.5). This is a property of the reference, which is
    why published SAP values are small; ``continuous=True`` is the informative one for
    continuous factors, and ``disentanglement_scores`` reports it as ``sap_correlation``.

    Args:
      codes: ``[N, L]`` posterior means.
      factors: ``[N, K]`` ground-truth factor values (class labels when discretised, see module).
      groups: ``[N]`` group labels; whole groups go to one split (see the module docstring).
      continuous: squared correlation (True) or linear-SVM accuracy (False, the reference).
      seed: seeds the random train / test split.
      num_train, num_test: split sizes, disentanglement_lib's by default; scaled down in the same
        ratio when N is smaller than their sum.
      num_bins: discretisation of continuous-valued factors when ``continuous=False``.

    Returns:
      ``{"sap": float in [0, 1], "per_factor": [K floats], "num_train": int, "num_test": int}``
      (``nan`` for a constant factor). With a single latent the second-best score is taken as 0.
    """
    codes, factors = _validate_codes_and_factors(codes, factors)
    scored = _scored_factor_mask(factors)
    train_index, test_index = _split_indices(
        codes.shape[0], num_train, num_test, np.random.default_rng(seed), groups
    )
    if continuous:
        scores = _squared_correlation_matrix(codes[test_index], factors[test_index])
        # A factor constant on the held-out split alone correlates with nothing.
        scores[:, _is_constant(factors[test_index])] = 0.0
    else:
        labels = _discretize_factors(factors, num_bins)
        scores = _linear_svm_accuracy_matrix(
            codes[train_index], labels[train_index], codes[test_index], labels[test_index], scored, seed
        )
    per_factor = _top_two_gap(scores)
    return {
        "sap": _mean_over_scored(per_factor, scored),
        "per_factor": _per_factor_list(per_factor, scored),
        "num_train": int(train_index.size),
        "num_test": int(test_index.size),
    }


# ----------------------------------------------------------------------------- DCI


def _normalized_entropy(weights: np.ndarray, base: int) -> np.ndarray:
    """Entropy, in base ``base``, of each row of non-negative ``[R, C]`` weights normalised to sum 1.

    A row of zeros gets entropy 1 (it carries no weight in DCI's weighted sums anyway). With
    ``base == 1`` every entropy is 0: a distribution over a single outcome has no uncertainty.
    """
    if base == 1:
        return np.zeros(weights.shape[0])
    totals = weights.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        probabilities = weights / totals
        terms = np.where(probabilities > 0, probabilities * np.log(probabilities), 0.0)
    entropy = -terms.sum(axis=1) / math.log(base)
    return np.where(totals[:, 0] > 0, entropy, 1.0)


def _disentanglement_and_completeness(importance: np.ndarray) -> tuple[float, float]:
    """Eastwood & Williams D and C from a non-negative ``[L, K]`` importance matrix.

    D = sum_i rho_i (1 - H_K(R_i.)), rho_i = row sum / total; C = sum_j rho_j (1 - H_L(R_.j)).
    An all-zero matrix (no latent helps predict any factor) scores D = C = 0.
    """
    total = importance.sum()
    if total <= 0:
        return 0.0, 0.0
    num_latents, num_factors = importance.shape
    latent_share = importance.sum(axis=1) / total
    factor_share = importance.sum(axis=0) / total
    disentanglement = np.sum(latent_share * (1.0 - _normalized_entropy(importance, num_factors)))
    completeness = np.sum(factor_share * (1.0 - _normalized_entropy(importance.T, num_latents)))
    return float(disentanglement), float(completeness)


def _fit_boosted_trees(train_codes, train_target, test_codes, test_target, num_estimators: int, seed: int):
    """One factor's DCI predictor: (absolute feature importances [L], test accuracy)."""
    if np.unique(train_target).size < 2:
        # Only one class in the train split: predict it; no latent is used.
        return np.zeros(train_codes.shape[1]), float(np.mean(test_target == train_target[0]))
    model = GradientBoostingClassifier(n_estimators=num_estimators, max_depth=DCI_MAX_DEPTH, random_state=seed)
    model.fit(train_codes, train_target)
    return np.abs(model.feature_importances_), float(np.mean(model.predict(test_codes) == test_target))


def dci_many(
    codes_by_run: Mapping,
    factors,
    *,
    groups=None,
    num_train: int | None = None,
    num_test: int | None = None,
    fast: bool = False,
    seed: int = 0,
    num_bins: int = DEFAULT_NUM_BINS,
    n_jobs: int = 1,
) -> dict:
    """``dci`` of several codes of the same images (e.g. two models), all fits run in one pool.

    Args:
      codes_by_run: name -> ``[N, L_name]`` posterior means of the same N images.
      factors: ``[N, K]`` ground-truth factor values.
      groups: ``[N]`` group labels; whole groups go to one split (see the module docstring), the
        same split for every code.
      num_train, num_test: split sizes; ``None`` takes the setting's default. When N is smaller
        than their sum both are scaled down in the same ratio.
      fast: the fast approximation (True) or the reference setting (False); see ``dci``.
      seed: seeds the split and the boosted trees.
      num_bins: classes per continuous-valued factor.
      n_jobs: boosted-tree fits (one per (code, factor)) run at once, in threads (the tree
        builder releases the GIL); joblib's convention, -1 for one per core. The fits and so the
        scores are the same whatever ``n_jobs`` is.

    Returns:
      name -> ``dci``'s result.
    """
    if num_train is None:
        num_train = FAST_DCI_NUM_TRAIN if fast else REFERENCE_NUM_TRAIN
    if num_test is None:
        num_test = FAST_DCI_NUM_TEST if fast else REFERENCE_NUM_TEST
    num_estimators = FAST_DCI_NUM_ESTIMATORS if fast else REFERENCE_DCI_NUM_ESTIMATORS
    prepared = {}
    for name, codes in codes_by_run.items():
        codes, checked_factors = _validate_codes_and_factors(codes, factors)
        prepared[name] = codes
    scored = _scored_factor_mask(checked_factors)
    labels = _discretize_factors(checked_factors, num_bins)
    train_index, test_index = _split_indices(
        checked_factors.shape[0], num_train, num_test, np.random.default_rng(seed), groups
    )
    train_labels, test_labels = labels[train_index], labels[test_index]
    jobs = [(name, factor) for name in prepared for factor in np.flatnonzero(scored)]
    fits = Parallel(n_jobs=n_jobs, prefer="threads")(
        delayed(_fit_boosted_trees)(
            prepared[name][train_index], train_labels[:, factor], prepared[name][test_index],
            test_labels[:, factor], num_estimators, seed)
        for name, factor in jobs
    )
    results = {}
    for name, codes in prepared.items():
        importance = np.zeros((codes.shape[1], checked_factors.shape[1]))
        accuracies = []
        for (fit_name, factor), (factor_importance, accuracy) in zip(jobs, fits):
            if fit_name == name:
                importance[:, factor] = factor_importance
                accuracies.append(accuracy)
        disentanglement, completeness = _disentanglement_and_completeness(importance[:, scored])
        results[name] = {
            "disentanglement": disentanglement,
            "completeness": completeness,
            "informativeness": float(np.mean(accuracies)),
            "importance": importance.tolist(),
            "num_train": int(train_index.size),
            "num_test": int(test_index.size),
        }
    return results


def dci(codes, factors, **options) -> dict:
    """Disentanglement, completeness and informativeness (Eastwood & Williams 2018).

    As disentanglement_lib computes it: each factor is discretised (``num_bins`` classes, see the
    module docstring) and predicted from the latents by a ``GradientBoostingClassifier``; the
    importance matrix ``R[latent, factor]`` is the absolute impurity-based feature importances.
    D = sum_i rho_i (1 - H_K(R_i.)) with H_K the entropy of row i normalised, in base K (number of
    scored factors) and rho_i the latent's share of the total importance; C = sum_j rho_j
    (1 - H_L(R_.j)) in base L (number of latents); I = mean held-out accuracy over factors.
    With one factor D is 1 and with one latent C is 1 whenever anything is predicted (entropy in
    base 1 is taken as 0). Constant latents get importance 0; they still count in C's base L.

    ``fast=False`` (the default) is the reference setting: 10,000 train / 5,000 test points and
    sklearn's defaults (100 stages of depth-3 trees; one tree per class per stage, so 2,000 trees
    per 20-class factor, each split searching every latent). This is the setting to report.
    Where its time goes: almost all of it is those trees' fits (scikit-learn's exact splitter
    sorts every latent at every node, for every one of the 2,000 trees). Measured on this project's
    2-core machine on a quickstart model's codes (4,000 test images, 64 latents, split by group into
    2,680 / 1,320): 120 CPU-seconds per 20-class factor, 360 for the three scene factors, against
    2.3 s for the reference SAP (192 SVMs), 1.3 s for the fast DCI and 0.1 s for MIG. A single
    depth-3 tree on 2,667 x 64 takes ~54 ms alone, so nothing outside the trees is worth
    optimising, and nothing inside them can change without changing the reference. The fits of
    different factors (and runs, ``dci_many``) are independent: ``n_jobs`` runs them at once in
    threads, which gives the same trees.
    ``fast=True`` (for monitoring) keeps every latent and the same trees but fits 2 stages on
    500 train points (1,000 test points). Where the full fit spends its later stages splitting on
    uninformative latents (entangled or hard-to-predict factors), so does this one, in about the
    same proportion, so D and C track the reference; I reads low on hard factors (fewer points,
    fewer stages). D / C / I, fast vs reference (100 stages, 2,000 / 1,000 points) on 3,000
    points x 40 latents x 3 uniform factors (image-level split):
      perfect code            1.00 / 0.98 / 0.98   vs 1.00 / 1.00 / 1.00
      randomly rotated        0.14 / 0.14 / 0.12   vs 0.05 / 0.15 / 0.28
      each factor in 8 noisy  0.14 / 0.06 / 0.10   vs 0.10 / 0.04 / 0.13
      one clean, two mixed    0.58 / 0.44 / 0.41   vs 0.55 / 0.49 / 0.59
    It is an approximation: ``disentanglement_scores`` reports it as ``dci_fast_*``.
    (Screening the latents by mutual information before the fit was tried and rejected: it was
    as fast but read C = 0.61 for the rotated code, because the latents it drops can no longer
    absorb the importance the reference gives them.)

    Args:
      codes: ``[N, L]`` posterior means.
      factors: ``[N, K]`` ground-truth factor values.
      **options: ``dci_many``'s keyword arguments (groups, num_train, num_test, fast, seed,
        num_bins, n_jobs).

    Returns:
      ``{"disentanglement": D, "completeness": C, "informativeness": I,
      "importance": [L][K] nested list of floats, "num_train": int, "num_test": int}``; a constant
      factor's column is all 0 and is left out of D, C and I.
    """
    return dci_many({0: codes}, factors, **options)[0]


# ----------------------------------------------------------------------------- all together

# What each setting computes, recorded next to the scores (``disentanglement_scores``' "settings").
_SETTING_DESCRIPTIONS = {
    "mig": "disentanglement_lib reference: plug-in mutual information of each latent (20 equal-width bins) "
           "with each factor (20 equal-width bins), every point",
    "sap": "disentanglement_lib reference (continuous_factors=False): one-feature LinearSVC(C=0.01, "
           "class_weight='balanced') per (latent, factor), factors in 20 equal-width bins",
    "dci": "disentanglement_lib reference: GradientBoostingClassifier(n_estimators=100, max_depth=3) per factor, "
           "factors in 20 equal-width bins, informativeness = test accuracy",
    "sap_correlation": "approximation, not the reference: squared Pearson correlation of latent and raw factor "
                       "(disentanglement_lib's continuous_factors=True)",
    "dci_fast": "approximation, not the reference: the reference's trees with 2 boosting stages on at most "
                "500 train / 1,000 test points",
}


def disentanglement_scores_many(
    codes_by_run: Mapping, factors, *, groups=None, fast: bool = False, seed: int = 0, n_jobs: int = 1
) -> dict:
    """``disentanglement_scores`` of several codes of the same images, their DCI fits in one pool.

    Args:
      codes_by_run: name -> ``[N, L_name]`` posterior means of the same N images.
      factors, groups, fast, seed, n_jobs: as in ``disentanglement_scores``.

    Returns:
      name -> ``{"scores": ..., "settings": ...}`` as ``disentanglement_scores`` returns it.
    """
    factors = _as_2d_float(factors, "factors")
    split = {"groups": groups, "seed": seed}
    dci_results = dci_many(codes_by_run, factors, fast=fast, n_jobs=n_jobs, **split)
    split_name = "by image" if groups is None else "by group"
    results = {}
    for name, codes in codes_by_run.items():
        sap_result = sap(codes, factors, continuous=False, **split)
        scores = {"mig": mig(codes, factors)["mig"], "sap": sap_result["sap"]}
        settings = {
            "mig": {"setting": _SETTING_DESCRIPTIONS["mig"], "points": int(factors.shape[0])},
            "sap": {"setting": _SETTING_DESCRIPTIONS["sap"], "split": split_name,
                    "train_points": sap_result["num_train"], "test_points": sap_result["num_test"],
                    "reference_points": [REFERENCE_NUM_TRAIN, REFERENCE_NUM_TEST]},
        }
        dci_result = dci_results[name]
        prefix = "dci_fast" if fast else "dci"
        scores.update({f"{prefix}_{part}": dci_result[part]
                       for part in ("disentanglement", "completeness", "informativeness")})
        settings[prefix] = {"setting": _SETTING_DESCRIPTIONS[prefix], "split": split_name,
                            "train_points": dci_result["num_train"], "test_points": dci_result["num_test"]}
        if not fast:
            settings["dci"]["reference_points"] = [REFERENCE_NUM_TRAIN, REFERENCE_NUM_TEST]
        else:
            correlation = sap(codes, factors, continuous=True, **split)
            scores["sap_correlation"] = correlation["sap"]
            settings["sap_correlation"] = {"setting": _SETTING_DESCRIPTIONS["sap_correlation"], "split": split_name,
                                           "test_points": correlation["num_test"]}
        results[name] = {"scores": scores, "settings": settings}
    return results


def disentanglement_scores(codes, factors, *, groups=None, fast: bool = False, seed: int = 0,
                           n_jobs: int = 1) -> dict:
    """MIG, SAP and DCI of one code, with the setting each number comes from.

    Args:
      codes: ``[N, L]`` posterior means.
      factors: ``[N, K]`` ground-truth factor values.
      groups: ``[N]`` group labels; SAP's and DCI's splits keep whole groups on one side.
      fast: False (the default): the reference settings, keys ``mig``, ``sap``,
        ``dci_disentanglement``, ``dci_completeness``, ``dci_informativeness``. True: the fast
        approximation of DCI instead of the reference one, under ``dci_fast_*``, and the squared-
        correlation SAP under ``sap_correlation`` next to the reference ``sap`` (which is cheap).
        MIG always uses every point.
      seed: seeds SAP's and DCI's splits and DCI's trees.
      n_jobs: DCI's boosted-tree fits run at once (see ``dci_many``).

    Returns:
      ``{"scores": {key: float}, "settings": {"mig" | "sap" | "dci" | "dci_fast" | "sap_correlation":
      {"setting": what it computes, "split": "by group" | "by image", "train_points", "test_points",
      "reference_points": [10000, 5000] for the reference settings}}}``.
    """
    return disentanglement_scores_many({0: codes}, factors, groups=groups, fast=fast, seed=seed, n_jobs=n_jobs)[0]
