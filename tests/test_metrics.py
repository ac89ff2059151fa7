"""Known-answer tests of the disentanglement (MIG, SAP, DCI) and equivariance / invariance metrics.

Every code here is built so that the right score follows from how it was built: a perfectly
disentangled code (each factor read off one latent), a maximally mixed rotation of it (every
latent an equal blend of every factor), a random rotation, and hand-computable small tables.
Small N keeps the whole file to a few seconds on 2 cores; DCI runs with its fast default.
"""
import math

import numpy as np
import pytest

from dcign_tf.metrics.disentanglement import dci, disentanglement_scores, mig, sap
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


def test_sap_of_perfect_code_is_high_and_of_rotated_codes_low(
    perfect_code, hadamard_code, random_rotation_code, factors
):
    # Perfect: r^2 = 1 for the own latent and ~1/N for the others.
    assert sap(perfect_code, factors)["sap"] > 0.99
    # Hadamard: every latent has r^2 = 1/4 with every factor, up to sampling noise (~0.02).
    assert sap(hadamard_code, factors)["sap"] < 0.1
    assert sap(random_rotation_code, factors)["sap"] < 0.5


def test_sap_discrete_uses_linear_svm_accuracy(rng):
    # Two-class factor, latent 0 separates the classes, latent 1 is noise: held-out SVM accuracy
    # is ~1 on latent 0 and ~1/2 on latent 1, so the gap is ~1/2 (sd of the chance accuracy on
    # 450 test points ~0.024). Binary on purpose: with 3+ ordered classes a one-vs-rest linear
    # classifier on one feature cannot carve out the middle class, so even a perfect latent
    # scores well below 1 (a property of the reference SAP, not of this code).
    num_points = 900
    factor = np.repeat([0.0, 1.0], num_points // 2)
    codes = np.stack([factor * 10.0 + rng.normal(scale=0.5, size=num_points), rng.normal(size=num_points)], axis=1)
    result = sap(codes, factor[:, None], continuous=False)
    assert 0.4 < result["sap"] < 0.6
    swapped = sap(codes[:, ::-1], factor[:, None], continuous=False)
    assert swapped["sap"] == pytest.approx(result["sap"])  # the score does not depend on latent order.


# ----------------------------------------------------------------------------- DCI


def test_dci_of_perfect_code_is_near_one(perfect_code, factors):
    result = dci(perfect_code, factors)
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
    mixed = dci(hadamard_code, factors)
    assert mixed["disentanglement"] < 0.1
    assert mixed["completeness"] < 1 - math.log(4) / math.log(6)
    rotated = dci(random_rotation_code, factors)
    assert rotated["disentanglement"] < 0.3
    assert rotated["completeness"] < 0.3


def test_duplicated_latents_separate_mig_and_sap_from_dci(factors, rng):
    # Every factor copied into two latents (two different affine maps): each latent still
    # serves one factor only (DCI D ~ 1) but each factor is split over two latents, so
    # C ~ 1 - ln 2 / ln 10 = 0.70 with 10 latents, and the best and second-best latent are
    # equally informative, so the MIG and SAP gaps vanish.
    copies = np.concatenate([factors * 0.02 + 1.0, factors * -0.05], axis=1)
    codes = _with_noise_latents(copies, rng)
    result = dci(codes, factors)
    assert result["disentanglement"] > 0.9
    assert result["completeness"] == pytest.approx(1 - math.log(2) / math.log(10), abs=0.06)
    assert mig(codes, factors)["mig"] < 0.01
    assert sap(codes, factors)["sap"] < 0.01


def test_dci_full_setting_agrees_on_a_small_discrete_problem(rng):
    # Two 5-valued discrete factors (categorical path, 5 trees per stage) keep the full
    # 100-stage, all-latent fit to a few seconds.
    num_points = 600
    discrete_factors = rng.integers(0, 5, size=(num_points, 2)).astype(float)
    codes = _with_noise_latents(discrete_factors + rng.normal(scale=0.05, size=discrete_factors.shape), rng)
    full = dci(codes, discrete_factors, fast=False, num_train=400, num_test=200)
    assert full["disentanglement"] > 0.9
    assert full["completeness"] > 0.9
    assert full["informativeness"] > 0.95


def test_dci_tolerates_constant_latents_and_a_single_factor(perfect_code, factors):
    codes = np.concatenate(
        [perfect_code[:, :1], np.zeros((NUM_POINTS, 1)), np.full((NUM_POINTS, 1), 0.1), perfect_code[:, 1:]],
        axis=1,
    )
    result = dci(codes, factors[:, :1])
    importance = np.array(result["importance"])
    assert np.all(np.isfinite(importance))
    assert importance[1:3].sum() == 0.0  # constant latents are never split on.
    # One factor: each latent's importance can only go to it, so D is 1 by definition.
    assert result["disentanglement"] == pytest.approx(1.0)
    assert result["completeness"] > 0.9


def test_dci_with_every_latent_constant_scores_zero(factors):
    result = dci(np.zeros((NUM_POINTS, 3)), factors[:, :2])
    assert result["disentanglement"] == 0.0
    assert result["completeness"] == 0.0
    assert result["informativeness"] < 0.2  # one guessed class out of 20.


# ----------------------------------------------------------------------------- all metrics together


def test_disentanglement_scores_on_200_latents_with_constant_ones(factors, rng):
    # DC-IGN's size: 200 latents, here 4 carry the factors, 20 are dead (constant), the rest noise.
    num_latents = 200
    codes = rng.normal(size=(NUM_POINTS, num_latents))
    codes[:, 100:120] = 0.0
    factor_columns = [3, 57, 131, 190]
    codes[:, factor_columns] = factors * 0.02
    scores = disentanglement_scores(codes, factors)
    assert set(scores) == {"mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness"}
    assert all(isinstance(value, float) and math.isfinite(value) for value in scores.values())
    # The max plug-in MI over 196 noise latents is ~2.7 sd above the mean bias: MIG ~0.98.
    assert scores["mig"] > 0.95
    assert scores["sap"] > 0.99
    assert scores["dci_disentanglement"] > 0.9
    assert scores["dci_completeness"] > 0.9


def test_scores_are_deterministic_for_a_fixed_seed(random_rotation_code, factors):
    first = disentanglement_scores(random_rotation_code, factors, seed=3)
    assert first == disentanglement_scores(random_rotation_code, factors, seed=3)


def test_constant_latents_score_zero_in_mig_and_sap(perfect_code, factors):
    codes = np.concatenate([np.zeros((NUM_POINTS, 1)), np.full((NUM_POINTS, 1), 0.1), perfect_code], axis=1)
    assert mig(codes, factors)["mig"] == pytest.approx(mig(perfect_code, factors)["mig"])
    assert sap(codes, factors)["sap"] == pytest.approx(sap(perfect_code, factors)["sap"])


def test_single_latent_takes_second_best_as_zero(factors):
    result = mig(factors[:, :1], factors[:, :1])
    assert result["mig"] == pytest.approx(1.0)
    assert sap(factors[:, :1], factors[:, :1])["sap"] == pytest.approx(1.0)


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
