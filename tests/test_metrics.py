"""Known-answer tests of the disentanglement (MIG, SAP, DCI) and equivariance / invariance metrics.

Every code here is built so that the right score follows from how it was built: a perfectly
disentangled code (each factor read off one latent), a maximally mixed rotation of it (every
latent an equal blend of every factor), a random rotation, and hand-computable small tables.
The big codes (4,000 points) are scored with the fast approximations (``fast=True`` for DCI,
``continuous=True`` for SAP); the reference settings, the defaults, are tested on small grouped
problems with few classes so that their 100-stage boosted trees stay at a few seconds on 2 cores.
"""
import math

import numpy as np
import pytest

from dcign_tf.metrics.disentanglement import (
    _split_indices, dci, dci_many, disentanglement_scores, disentanglement_scores_many, mig, sap)
from dcign_tf.metrics.equivariance import equivariance, invariance

NUM_POINTS = 4000
NUM_FACTORS = 4
NUM_NOISE_LATENTS = 2
NUM_BINS = 20


def _uniform_factors(rng, num_points=NUM_POINTS, num_factors=NUM_FACTORS):
    """[N, K] independent continuous factors, e.g. azimuth / elevation / light in degrees."""
    return rng.uniform(-90.0, 90.0, size=(num_points, num_factors))


def _with_noise_latents(factor_latents, rng, num_noise=NUM_NOISE_LATENTS):
    """Appends latents that carry no factor information (the 'intrinsic' units)."""
    noise = rng.normal(size=(factor_latents.shape[0], num_noise))
    return np.concatenate([factor_latents, noise], axis=1)


def _perfect_code(factors, rng):
    """Latent k = an affine map of factor k (a different scale and offset per latent), plus noise latents."""
    scales = rng.uniform(0.01, 0.05, size=factors.shape[1]) * rng.choice([-1.0, 1.0], size=factors.shape[1])
    offsets = rng.normal(size=factors.shape[1])
    return _with_noise_latents(factors * scales + offsets, rng)


def _standardised(factors):
    return (factors - factors.mean(axis=0)) / factors.std(axis=0)


# Normalised 4x4 Hadamard matrix: orthogonal, every entry +-1/2, so after rotating standardised
# independent factors every latent holds exactly a quarter of every factor's variance.
HADAMARD_4 = 0.5 * np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=float)


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def factors(rng):
    return _uniform_factors(rng)


@pytest.fixture(scope="module")
def perfect_code(factors, rng):
    return _perfect_code(factors, rng)


@pytest.fixture(scope="module")
def hadamard_code(factors, rng):
    return _with_noise_latents(_standardised(factors) @ HADAMARD_4, rng)


@pytest.fixture(scope="module")
def random_rotation_code(factors):
    rotation_rng = np.random.default_rng(7)
    # Haar-random orthogonal matrix: QR of a Gaussian matrix with the sign of R's diagonal fixed.
    q, r = np.linalg.qr(rotation_rng.normal(size=(NUM_FACTORS, NUM_FACTORS)))
    rotation = q * np.sign(np.diag(r))
    return _with_noise_latents(_standardised(factors) @ rotation, rotation_rng)


# ----------------------------------------------------------------------------- MIG


def test_mig_matches_hand_computed_plug_in_mutual_information():
    # Factor: 4 zeros then 4 ones. Latent 0 copies it; latent 1 agrees on 6 of 8 points.
    factor = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=float)
    agreeing_latent = factor.copy()
    partial_latent = np.array([0, 0, 0, 1, 0, 1, 1, 1], dtype=float)
    codes = np.stack([agreeing_latent, partial_latent], axis=1)
    # Contingency table of (partial latent, factor): [[3, 1], [1, 3]] / 8, marginals 1/2 each.
    partial_mi = 2 * (3 / 8) * math.log((3 / 8) / (1 / 4)) + 2 * (1 / 8) * math.log((1 / 8) / (1 / 4))
    factor_entropy = math.log(2)
    expected = (factor_entropy - partial_mi) / factor_entropy  # best MI = H(factor) since latent 0 copies it.
    result = mig(codes, factor[:, None])
    assert result["mig"] == pytest.approx(expected, abs=1e-12)
    assert result["per_factor"] == [pytest.approx(expected, abs=1e-12)]


def test_mig_of_perfect_code_is_one_minus_noise_latents_plug_in_bias(perfect_code, factors):
    # An affine map sends np.histogram's equal-width edges of the factor onto those of the latent,
    # so the factor's own latent has MI = H(factor) ~ ln 20 exactly. What keeps MIG below 1 is the
    # plug-in MI of the second-best latent, a noise latent: its bias is ~ (20-1)^2 / (2N) nats
    # (chi-square with 361 dof / 2N, sd ~7%), i.e. ~0.045 nats at N=4000, ~1.5% of ln 20.
    result = mig(perfect_code, factors, num_bins=NUM_BINS)
    expected_gap_loss = (NUM_BINS - 1) ** 2 / (2 * NUM_POINTS) / math.log(NUM_BINS)
    for score in result["per_factor"]:
        assert 1 - 2 * expected_gap_loss < score < 1 - 0.5 * expected_gap_loss
    assert result["mig"] == pytest.approx(np.mean(result["per_factor"]))


def test_mig_of_perfect_code_with_encoder_noise_stays_high(factors, rng):
    # Encoder noise of sd = 1/10 of a bin width moves points near a bin edge into the next bin:
    # about 2 * 0.4 * sd / width = 8% of points cross, costing ~0.4 nats of the ~3 nats
    # (each crossing point also spreads the joint histogram), so MIG ~0.87: above 0.8, clearly below 1.
    bin_width = 180.0 / NUM_BINS
    noisy = factors + rng.normal(scale=0.1 * bin_width, size=factors.shape)
    score = mig(_with_noise_latents(noisy, rng), factors)["mig"]
    assert 0.8 < score < 0.97


def test_mig_of_rotated_codes_is_low(hadamard_code, random_rotation_code, factors):
    # Every Hadamard latent shares each factor equally: best and second-best MI are about equal.
    assert mig(hadamard_code, factors)["mig"] < 0.1
    assert mig(random_rotation_code, factors)["mig"] < 0.3


def test_mig_skips_constant_factors_and_raises_when_all_are(perfect_code, factors):
    with_constant = np.concatenate([factors[:, :2], np.full((NUM_POINTS, 1), 3.0)], axis=1)
    result = mig(perfect_code, with_constant)
    assert math.isnan(result["per_factor"][2])
    assert result["mig"] == pytest.approx(np.mean(result["per_factor"][:2]))
    with pytest.raises(ValueError, match="constant"):
        mig(perfect_code, np.ones((NUM_POINTS, 2)))


# ----------------------------------------------------------------------------- SAP


def test_correlation_sap_of_perfect_code_is_high_and_of_rotated_codes_low(
    perfect_code, hadamard_code, random_rotation_code, factors
):
    # Perfect: r^2 = 1 for the own latent and ~1/N for the others.
    assert sap(perfect_code, factors, continuous=True)["sap"] > 0.99
    # Hadamard: every latent has r^2 = 1/4 with every factor, up to sampling noise (~0.02).
    assert sap(hadamard_code, factors, continuous=True)["sap"] < 0.1
    assert sap(random_rotation_code, factors, continuous=True)["sap"] < 0.5


def test_sap_discrete_uses_linear_svm_accuracy(rng):
    # Two-class factor, latent 0 separates the classes, latent 1 is noise: held-out SVM accuracy
    # is ~1 on latent 0 and ~1/2 on latent 1, so the gap is ~1/2 (sd of the chance accuracy on
    # 450 test points ~0.024). Binary on purpose: with 3+ ordered classes a one-vs-rest linear
    # classifier on one feature cannot carve out the middle class, so even a perfect latent
    # scores well below 1 (a property of the reference SAP, not of this code).
    num_points = 900
    factor = np.repeat([0.0, 1.0], num_points // 2)
    codes = np.stack([factor * 10.0 + rng.normal(scale=0.5, size=num_points), rng.normal(size=num_points)], axis=1)
    result = sap(codes, factor[:, None])  # the reference: continuous=False
    assert 0.4 < result["sap"] < 0.6
    swapped = sap(codes[:, ::-1], factor[:, None])
    assert swapped["sap"] == pytest.approx(result["sap"])  # the score does not depend on latent order.


# ----------------------------------------------------------------------------- DCI


def test_dci_of_perfect_code_is_near_one(perfect_code, factors):
    result = dci(perfect_code, factors, fast=True)
    assert result["disentanglement"] > 0.9
    assert result["completeness"] > 0.9
    assert result["informativeness"] > 0.9  # a single threshold per bin recovers the 20 classes.
    importance = np.array(result["importance"])
    assert importance.shape == (NUM_FACTORS + NUM_NOISE_LATENTS, NUM_FACTORS)
    # The factor's own latent carries almost all of its importance.
    own_share = np.diag(importance[:NUM_FACTORS]) / importance.sum(axis=0)
    assert np.all(own_share > 0.9)


def test_dci_of_rotated_codes_is_clearly_lower(hadamard_code, random_rotation_code, factors):
    # Hadamard: each of the 4 mixed latents is equally important for every factor, so every row
    # of R is ~uniform over the 4 factors (D ~ 0), and every column is at least as spread as
    # uniform over those 4 of the 6 latents (C <= 1 - ln 4 / ln 6 = 0.23; lower still, since the
    # trees also split on the 2 noise latents when the factor is this hard to predict).
    mixed = dci(hadamard_code, factors, fast=True)
    assert mixed["disentanglement"] < 0.1
    assert mixed["completeness"] < 1 - math.log(4) / math.log(6)
    rotated = dci(random_rotation_code, factors, fast=True)
    assert rotated["disentanglement"] < 0.3
    assert rotated["completeness"] < 0.3


def test_duplicated_latents_separate_mig_and_sap_from_dci(factors, rng):
    # Every factor copied into two latents (two different affine maps): each latent still
    # serves one factor only (DCI D ~ 1) but each factor is split over two latents, so
    # C ~ 1 - ln 2 / ln 10 = 0.70 with 10 latents, and the best and second-best latent are
    # equally informative, so the MIG and SAP gaps vanish.
    copies = np.concatenate([factors * 0.02 + 1.0, factors * -0.05], axis=1)
    codes = _with_noise_latents(copies, rng)
    result = dci(codes, factors, fast=True)
    assert result["disentanglement"] > 0.9
    assert result["completeness"] == pytest.approx(1 - math.log(2) / math.log(10), abs=0.06)
    assert mig(codes, factors)["mig"] < 0.01
    assert sap(codes, factors, continuous=True)["sap"] < 0.01


# ----------------------------------------------------------------------------- the reference settings, grouped

# Small grouped problems with discrete factors of few classes (few trees per boosting stage), so that the
# reference DCI (100 stages) takes seconds: 40 groups of 5 images, 2 factors of 4 values, 2 noise latents.
NUM_GROUPS, GROUP_SIZE, NUM_CLASSES = 40, 5, 4


def _grouped_discrete_problem(seed=0):
    """(factors [200, 2] in {0..3}, group ids [200]); each factor uniform over its classes."""
    problem_rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(NUM_GROUPS), GROUP_SIZE)
    factors = problem_rng.integers(0, NUM_CLASSES, size=(NUM_GROUPS * GROUP_SIZE, 2)).astype(float)
    return factors, groups, problem_rng


def test_reference_dci_of_a_perfect_grouped_code_is_near_one_and_of_a_mixed_one_low():
    factors, groups, problem_rng = _grouped_discrete_problem()
    noise = problem_rng.normal(size=(factors.shape[0], 2))
    perfect = np.concatenate([factors + problem_rng.normal(scale=0.05, size=factors.shape), noise], axis=1)
    standardised = _standardised(factors)
    # 45 degrees: each latent holds exactly half of each factor's variance, so every row of R is ~uniform.
    mixed = np.concatenate([standardised @ (np.array([[1.0, 1.0], [1.0, -1.0]]) / math.sqrt(2)), noise], axis=1)
    scores = dci_many({"perfect": perfect, "mixed": mixed}, factors, groups=groups, n_jobs=2)
    assert scores["perfect"]["num_train"] + scores["perfect"]["num_test"] == 200  # 2 : 1, whole groups
    assert scores["perfect"]["num_train"] % GROUP_SIZE == 0
    assert scores["perfect"]["disentanglement"] > 0.9
    assert scores["perfect"]["completeness"] > 0.9
    assert scores["perfect"]["informativeness"] > 0.95
    assert scores["mixed"]["disentanglement"] < 0.2
    # Each factor's importance is split evenly over the 2 mixed latents (and some on noise): C is at most
    # 1 - ln 2 / ln 4 = 0.5 with 4 latents.
    assert scores["mixed"]["completeness"] < 0.55
    # The same fits one at a time: n_jobs changes nothing.
    assert dci(perfect, factors, groups=groups) == scores["perfect"]


def test_reference_sap_separates_codes_of_binary_factors_but_not_of_20_binned_ones():
    factors, groups, problem_rng = _grouped_discrete_problem(1)
    binary = (factors >= 2).astype(float)  # 2 classes each, balanced
    noise = problem_rng.normal(size=(binary.shape[0], 2))
    perfect = np.concatenate([binary * 2.0 + problem_rng.normal(scale=0.1, size=binary.shape), noise], axis=1)
    mixed = np.concatenate([_standardised(binary) @ (np.array([[1.0, 1.0], [1.0, -1.0]]) / math.sqrt(2)), noise],
                           axis=1)
    # Perfect: the own latent is ~100% right, the best other (noise or the other factor's) ~50%: gap ~0.5.
    assert 0.4 < sap(perfect, binary, groups=groups)["sap"] < 0.6
    # 45 degrees: both mixed latents are ~75% right for both factors: the gap vanishes.
    assert sap(mixed, binary, groups=groups)["sap"] < 0.12
    # 20 equal-width bins of a continuous factor: a one-vs-rest linear SVM on one feature predicts only
    # the extreme bins, so even a perfect latent reads ~0.09 against ~0.05 for noise: SAP ~0.04, the same
    # as a rotated code (the documented limit of the reference on continuous factors).
    continuous = np.random.default_rng(2).uniform(-1.0, 1.0, size=(1000, 2))
    perfect_continuous = _with_noise_latents(continuous * 0.5, np.random.default_rng(3))
    rotated = _with_noise_latents(continuous @ (np.array([[1.0, 1.0], [1.0, -1.0]]) / math.sqrt(2)),
                                  np.random.default_rng(3))
    perfect_sap = sap(perfect_continuous, continuous)["sap"]
    assert perfect_sap < 0.1
    assert abs(perfect_sap - sap(rotated, continuous)["sap"]) < 0.05
    assert sap(perfect_continuous, continuous, continuous=True)["sap"] > 0.95  # the correlation variant sees it


def test_splits_keep_whole_groups_on_one_side():
    groups = np.repeat(np.arange(30), 7)[np.random.default_rng(0).permutation(210)]  # groups scattered
    train, test = _split_indices(210, 10_000, 5_000, np.random.default_rng(4), groups)
    assert not set(groups[train]) & set(groups[test])
    assert len(train) + len(test) == 210  # fewer points than the reference: all used, about 2 : 1
    assert abs(len(train) - 140) <= 7
    again = _split_indices(210, 10_000, 5_000, np.random.default_rng(4), groups)
    np.testing.assert_array_equal(train, again[0])
    # More points than asked for: at least the requested sizes, whole groups, the rest unused.
    train, test = _split_indices(210, 50, 20, np.random.default_rng(4), groups)
    assert 50 <= len(train) < 57 and 20 <= len(test) < 27
    # No groups: an image-level split of exactly the requested sizes.
    train, test = _split_indices(210, 50, 20, np.random.default_rng(4))
    assert (len(train), len(test)) == (50, 20)
    with pytest.raises(ValueError, match="groups"):
        _split_indices(210, 50, 20, np.random.default_rng(4), np.zeros(210))


def test_a_group_split_stops_dci_reading_a_factor_off_near_twins():
    # The factor is fixed per group and the code is a per-group random vector that says nothing about it
    # (an identity code). Split by image, the trees memorise each group's code from its twins in the
    # train split and "predict" the factor; split by group they cannot: chance, 1 / 4.
    factors, groups, problem_rng = _grouped_discrete_problem(5)
    group_factor = factors[::GROUP_SIZE, :1].repeat(GROUP_SIZE, axis=0)
    identity_code = np.repeat(problem_rng.normal(size=(NUM_GROUPS, 2)), GROUP_SIZE, axis=0)
    identity_code += problem_rng.normal(scale=0.01, size=identity_code.shape)
    by_group = dci(identity_code, group_factor, groups=groups)["informativeness"]
    by_image = dci(identity_code, group_factor)["informativeness"]
    assert by_group < 0.5
    assert by_image > 0.7


def test_reference_scores_record_their_settings():
    factors, groups, problem_rng = _grouped_discrete_problem(6)
    codes = _with_noise_latents(factors + problem_rng.normal(scale=0.05, size=factors.shape), problem_rng)
    result = disentanglement_scores_many({"a": codes, "b": codes[:, ::-1]}, factors, groups=groups, n_jobs=2)
    assert set(result["a"]["scores"]) == {"mig", "sap", "dci_disentanglement", "dci_completeness",
                                          "dci_informativeness"}
    settings = result["a"]["settings"]
    assert set(settings) == {"mig", "sap", "dci"}
    for key in ("sap", "dci"):
        assert settings[key]["split"] == "by group"
        assert settings[key]["reference_points"] == [10_000, 5_000]
        assert settings[key]["train_points"] + settings[key]["test_points"] == 200
        assert settings[key]["setting"].startswith("disentanglement_lib reference")
    # Reordering the latents moves no score.
    for key, value in result["a"]["scores"].items():
        assert result["b"]["scores"][key] == pytest.approx(value, abs=1e-9), key
    # The approximations never appear under the reference names.
    fast = disentanglement_scores(codes, factors, groups=groups, fast=True)
    assert set(fast["scores"]) == {"mig", "sap", "sap_correlation", "dci_fast_disentanglement",
                                   "dci_fast_completeness", "dci_fast_informativeness"}
    assert set(fast["settings"]) == {"mig", "sap", "sap_correlation", "dci_fast"}
    assert fast["settings"]["dci_fast"]["setting"].startswith("approximation")
    assert fast["scores"]["sap"] == result["a"]["scores"]["sap"]  # the reference SAP either way
    assert fast["scores"]["dci_fast_disentanglement"] > 0.9


def test_dci_tolerates_constant_latents_and_a_single_factor(perfect_code, factors):
    codes = np.concatenate(
        [perfect_code[:, :1], np.zeros((NUM_POINTS, 1)), np.full((NUM_POINTS, 1), 0.1), perfect_code[:, 1:]],
        axis=1,
    )
    result = dci(codes, factors[:, :1], fast=True)
    importance = np.array(result["importance"])
    assert np.all(np.isfinite(importance))
    assert importance[1:3].sum() == 0.0  # constant latents are never split on.
    # One factor: each latent's importance can only go to it, so D is 1 by definition.
    assert result["disentanglement"] == pytest.approx(1.0)
    assert result["completeness"] > 0.9


def test_dci_with_every_latent_constant_scores_zero(factors):
    result = dci(np.zeros((NUM_POINTS, 3)), factors[:, :2], fast=True)
    assert result["disentanglement"] == 0.0
    assert result["completeness"] == 0.0
    assert result["informativeness"] < 0.2  # one guessed class out of 20.


# ----------------------------------------------------------------------------- all metrics together


def test_fast_scores_on_200_latents_with_constant_ones(factors, rng):
    # DC-IGN's size: 200 latents, here 4 carry the factors, 20 are dead (constant), the rest noise.
    # (The reference SAP fits 800 SVMs here, a minute on 2 cores: it is tested on small codes below.)
    num_latents = 200
    codes = rng.normal(size=(NUM_POINTS, num_latents))
    codes[:, 100:120] = 0.0
    factor_columns = [3, 57, 131, 190]
    codes[:, factor_columns] = factors * 0.02
    scores = {"mig": mig(codes, factors)["mig"], "sap_correlation": sap(codes, factors, continuous=True)["sap"],
              **{f"dci_fast_{key}": value for key, value in dci(codes, factors, fast=True).items()
                 if key in ("disentanglement", "completeness")}}
    assert all(isinstance(value, float) and math.isfinite(value) for value in scores.values())
    # The max plug-in MI over 196 noise latents is ~2.7 sd above the mean bias: MIG ~0.98.
    assert scores["mig"] > 0.95
    assert scores["sap_correlation"] > 0.99
    assert scores["dci_fast_disentanglement"] > 0.9
    assert scores["dci_fast_completeness"] > 0.9


def test_scores_are_deterministic_for_a_fixed_seed(random_rotation_code, factors):
    first = disentanglement_scores(random_rotation_code, factors, fast=True, seed=3)
    assert first == disentanglement_scores(random_rotation_code, factors, fast=True, seed=3)


def test_constant_latents_score_zero_in_mig_and_sap(perfect_code, factors):
    codes = np.concatenate([np.zeros((NUM_POINTS, 1)), np.full((NUM_POINTS, 1), 0.1), perfect_code], axis=1)
    assert mig(codes, factors)["mig"] == pytest.approx(mig(perfect_code, factors)["mig"])
    assert sap(codes, factors, continuous=True)["sap"] == pytest.approx(
        sap(perfect_code, factors, continuous=True)["sap"])


def test_single_latent_takes_second_best_as_zero(factors):
    result = mig(factors[:, :1], factors[:, :1])
    assert result["mig"] == pytest.approx(1.0)
    assert sap(factors[:, :1], factors[:, :1], continuous=True)["sap"] == pytest.approx(1.0)


@pytest.mark.parametrize("metric", [mig, sap, dci, disentanglement_scores])
def test_mismatched_number_of_points_raises(metric, perfect_code, factors):
    with pytest.raises(ValueError, match="same number of rows"):
        metric(perfect_code[:100], factors[:99])


def test_non_finite_codes_raise(perfect_code, factors):
    codes = perfect_code.copy()
    codes[5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mig(codes, factors)


# ----------------------------------------------------------------------------- equivariance


def test_equivariance_noisy_monotonic_map(rng):
    true = rng.uniform(-1.0, 1.0, size=2000)
    inferred = np.exp(4.0 * (true + rng.normal(scale=0.01, size=true.shape)))
    result = equivariance(inferred, true)
    assert result["spearman"] > 0.99  # ranks survive any increasing map; only the small noise swaps them.
    assert result["pearson"] < result["spearman"] - 0.05  # the exponential bends the line.
    assert result["r2"] == pytest.approx(result["pearson"] ** 2)


def test_equivariance_independent_noise_is_near_zero(rng):
    true = rng.uniform(-1.0, 1.0, size=2000)
    result = equivariance(rng.normal(size=2000), true)
    # Sampling sd of a null correlation is 1/sqrt(2000) = 0.022; 0.1 is 4.5 sd.
    assert abs(result["pearson"]) < 0.1
    assert abs(result["spearman"]) < 0.1
    assert result["r2"] < 0.01


def test_equivariance_linear_and_negative_maps(rng):
    true = rng.uniform(0.0, 360.0, size=1000)
    linear = equivariance(-3.0 + 0.5 * true + rng.normal(scale=1.0, size=true.shape), true)
    assert linear["r2"] > 0.999
    assert linear["pearson"] > 0.999
    decreasing = equivariance(-np.log1p(true) + rng.normal(scale=0.001, size=true.shape), true)
    assert decreasing["spearman"] < -0.99
    assert decreasing["pearson"] < -0.5
    assert decreasing["r2"] > 0.0  # R^2 does not carry the sign.


def test_equivariance_degenerate_inputs():
    true = np.linspace(0.0, 1.0, 50)
    constant = equivariance(np.full(50, 0.3), true)
    assert math.isnan(constant["pearson"]) and math.isnan(constant["spearman"])
    assert constant["r2"] == 0.0
    with pytest.raises(ValueError, match="same length"):
        equivariance(true[:10], true)


# ----------------------------------------------------------------------------- invariance


def _grouped_codes(rng, within_sd, num_groups=100, group_size=20, num_latents=5):
    """Codes whose latents take one value per group (sd 1) plus within-group noise of ``within_sd``."""
    group_ids = np.repeat(np.arange(num_groups), group_size)
    group_values = rng.normal(size=(num_groups, num_latents))[group_ids]
    return group_values + rng.normal(scale=within_sd, size=group_values.shape), group_ids


def test_invariance_of_latents_constant_within_groups_is_zero(rng):
    codes, group_ids = _grouped_codes(rng, within_sd=0.0)
    # Latent 0 is the active one: it varies inside every group, but it is not among those scored.
    codes[:, 0] = rng.normal(size=codes.shape[0])
    assert invariance(codes, group_ids, [1, 2, 3, 4]) < 1e-12
    mask = np.array([False, True, True, True, True])
    assert invariance(codes, group_ids, mask) == invariance(codes, group_ids, [1, 2, 3, 4])
    assert invariance(codes, group_ids, [0]) > 0.8


def test_invariance_matches_within_to_total_variance_ratio(rng):
    # Between-group sd 1, within-group sd 0.1: ratio 0.01 / (1 + 0.01) ~ 0.0099.
    codes, group_ids = _grouped_codes(rng, within_sd=0.1)
    assert invariance(codes, group_ids, range(5)) == pytest.approx(0.01 / 1.01, rel=0.25)


def test_invariance_averages_per_latent_ratios_so_scale_does_not_matter(rng):
    # A large, perfectly invariant latent and a tiny latent that ignores the groups: each
    # counts equally (ratios 0 and ~1), whatever their units.
    codes, group_ids = _grouped_codes(rng, within_sd=0.0, num_latents=2)
    codes[:, 0] *= 100.0
    codes[:, 1] = 0.01 * rng.normal(size=codes.shape[0])
    assert invariance(codes, group_ids, [0, 1]) == pytest.approx(0.5, abs=0.05)


def test_invariance_of_latents_independent_of_groups_is_one(rng):
    # Groups of ~4 points: a biased (ddof=0) within-group variance would read ~0.75 here.
    codes = rng.normal(size=(2000, 5))
    group_ids = rng.integers(0, 500, size=2000)
    assert invariance(codes, group_ids, range(5)) == pytest.approx(1.0, abs=0.1)


def test_invariance_edge_cases(rng):
    codes, group_ids = _grouped_codes(rng, within_sd=0.0)
    codes[:, 4] = 2.0  # a dead latent is left out rather than counted as perfectly invariant.
    assert invariance(codes, group_ids, [1, 4]) == invariance(codes, group_ids, [1])
    with pytest.raises(ValueError, match="constant"):
        invariance(codes, group_ids, [4])
    with pytest.raises(ValueError, match="2 or more points"):
        invariance(codes, np.arange(codes.shape[0]), [1])
    with pytest.raises(ValueError, match="one label per row"):
        invariance(codes, group_ids[:-1], [1])
