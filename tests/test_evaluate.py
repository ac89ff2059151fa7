"""dcign_tf.evaluate and dcign_tf.analysis: the metric wiring on constructed latents with known answers, the
calibration, a whole evaluation of tiny exported runs (metrics.json, figures, TensorBoard events), and bad input."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from dcign_tf import calibration as calibration_lib
from dcign_tf import evaluate
from dcign_tf.analysis import evaluation, report, scores, selection, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACTORS = ("azimuth", "elevation", "light", "identity")
SCENE = ("azimuth", "elevation", "light")
LAYOUT = {"azimuth": (0,), "elevation": (1,), "light": (2,), "identity": (3, 4, 5)}


def make_run(workdir, data_dir, mode="dcign", seed=0):
    """An exported run of configs/test.flags' architecture, untrained: evaluation needs weights, not good ones."""
    import keras

    from dcign_tf import config as config_lib
    from dcign_tf import export as export_lib
    from dcign_tf import train
    from dcign_tf.data import records
    from dcign_tf.model import DCIGN

    config = config_lib.from_flagfile(os.path.join(REPO, "configs", "test.flags"))
    config.workdir, config.data_dir, config.mode, config.seed = workdir, data_dir, mode, seed
    info = records.DatasetInfo.load(data_dir)
    os.makedirs(workdir, exist_ok=True)
    train.write_flags(config)
    keras.utils.set_random_seed(seed)
    model = DCIGN(info.factor_names, config.model_config())
    export_lib.export_model(model, os.path.join(workdir, "export"), train.export_info(config, info, model, 20))
    return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, faces_dataset):
    """A DC-IGN run and a baseline run over the session's test faces set."""
    root = tmp_path_factory.mktemp("eval_runs")
    return {mode: make_run(str(root / mode), faces_dataset, mode, seed)
            for seed, mode in enumerate(["dcign", "baseline"])}


# ---------------------------------------------------------------------------------------------------
# Constructed latents.


def grouped_sample(codes_per_group, values_per_group, group_factors, scene=SCENE):
    """A TestSample of tiny 4x4 'images' around given codes [g, G, L] and factor values [g, G, F]."""
    images = [np.zeros((len(codes), 4, 4, 1), np.float32) for codes in codes_per_group]
    return selection.sample_from_groups(images, list(values_per_group), list(group_factors), FACTORS, scene)


def structured_codes(rng, groups_per_factor=5, group_size=6):
    """Codes of a perfect DC-IGN: z0..z2 = azimuth, elevation, light (affine); z3..z5 identity.

    In a group only the active factor's value (and so its latents) changes.
    Returns (codes [N, 6], sample).
    """
    codes, values, factors = [], [], []
    for factor in FACTORS:
        for _ in range(groups_per_factor):
            scene = rng.uniform(-1, 1, size=3)
            identity = rng.normal(size=3)
            group_values = np.tile(np.r_[scene, 0.0], (group_size, 1))
            group_identity = np.tile(identity, (group_size, 1))
            if factor == "identity":
                group_identity = rng.normal(size=(group_size, 3))
                group_values[:, 3] = np.arange(group_size)
            else:
                group_values[:, FACTORS.index(factor)] = rng.uniform(-1, 1, size=group_size)
            codes.append(np.concatenate([2.0 * group_values[:, :3] + 0.5, group_identity], axis=1))
            values.append(group_values)
            factors.append(factor)
    sample = grouped_sample(codes, values, factors)
    return np.concatenate(codes), sample


def test_latent_choice_follows_layout_or_within_group_variance():
    rng = np.random.default_rng(0)
    codes, sample = structured_codes(rng)
    # DC-IGN, one latent per scene factor: the layout's latent, even where another varies more.
    swapped = codes.copy()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]
    assert selection.choose_latents(swapped, sample.groups, LAYOUT, "dcign")["azimuth"] == 0
    # Several latents (identity): its most variable one within identity groups.
    identity_heavy = codes.copy()
    identity_heavy[:, 4] *= 10.0
    assert selection.choose_latents(identity_heavy, sample.groups, LAYOUT, "dcign")["identity"] == 4
    # Baseline: every latent is a candidate; each scene factor's own latent varies most in its groups.
    permutation = [4, 2, 5, 0, 1, 3]  # new column k holds old latent permutation[k]
    chosen = selection.choose_latents(codes[:, permutation], sample.groups, LAYOUT, "baseline")
    assert [chosen[f] for f in SCENE] == [permutation.index(0), permutation.index(1), permutation.index(2)]
    variance = selection.within_group_variance(codes, sample.groups["azimuth"])
    assert variance[0] > 0 and np.allclose(variance[1:], 0)


def test_own_latents_for_dcign_and_baseline():
    chosen = {"azimuth": 4, "elevation": 1, "light": 0, "identity": 2}
    assert selection.own_latents(LAYOUT, "dcign", chosen, SCENE, 6) == {
        "azimuth": (0,), "elevation": (1,), "light": (2,), "identity": (3, 4, 5)}
    assert selection.own_latents(LAYOUT, "baseline", chosen, SCENE, 6) == {
        "azimuth": (4,), "elevation": (1,), "light": (0,), "identity": (2, 3, 5)}


def test_invariance_and_equivariance_wiring_on_a_perfect_code():
    rng = np.random.default_rng(1)
    codes, sample = structured_codes(rng)
    chosen = selection.choose_latents(codes, sample.groups, LAYOUT, "dcign")
    own = selection.own_latents(LAYOUT, "dcign", chosen, SCENE, 6)
    # The other factors' latents never move within a group: perfect invariance.
    assert scores.invariance_scores(codes, sample, own) == pytest.approx(dict.fromkeys(FACTORS, 0.0), abs=1e-12)
    equivariance = scores.equivariance_scores(codes, sample, chosen)
    for factor in SCENE:
        assert equivariance[factor]["pearson"] == pytest.approx(1.0)
        assert equivariance[factor]["r2"] == pytest.approx(1.0)
    # Mix the azimuth signal into the elevation latent: azimuth groups now move another factor's latent.
    leaky = codes.copy()
    leaky[:, 1] += codes[:, 0]
    assert scores.invariance_scores(leaky, sample, own)["azimuth"] > 0.1
    assert scores.invariance_scores(leaky, sample, own)["light"] == pytest.approx(0.0, abs=1e-12)
    # The wrong latent for light (elevation's) does not track light.
    assert abs(scores.equivariance_scores(codes, sample, {**chosen, "light": 1})["light"]["pearson"]) < 0.5


class LinearRenderer:
    """A 'model' with an exact decoder: images are a fixed linear map of the code, the encoder its inverse."""

    def __init__(self, num_latents, size, seed=0):
        self.basis = np.random.default_rng(seed).normal(size=(num_latents, size * size)) * 0.1
        self.size = size

    def decode(self, codes):
        return (np.asarray(codes) @ self.basis).reshape(-1, self.size, self.size, 1) + 0.5


def test_novel_view_with_an_exact_decoder_is_zero():
    rng = np.random.default_rng(2)
    codes, sample = structured_codes(rng)
    renderer = LinearRenderer(codes.shape[1], 5)
    images = renderer.decode(codes)
    for factor in SCENE:
        pairs = selection.novel_view_pairs(sample.groups[factor], 4, seed=3)
        mse, rendered = scores.novel_view(renderer.decode, codes, images, pairs, LAYOUT[factor])
        assert mse == pytest.approx(0.0, abs=1e-12)  # float32 rounding only
        assert rendered.shape == (len(pairs), 5, 5, 1)
        # Swapping another factor's latent leaves the input's pose: the target is missed.
        wrong = next(f for f in SCENE if f != factor)
        assert scores.novel_view(renderer.decode, codes, images, pairs, LAYOUT[wrong])[0] > 1e-4


def test_identity_retention_is_one_for_an_exact_renderer_and_zero_for_a_stranger():
    # Linear "faces": image = code @ basis, identity in z3..z5 ~ N(0, I). Identity groups hold 6 people at
    # one view; every other group one person whose one factor varies.
    rng = np.random.default_rng(5)
    # 100 groups per factor: pairs of a group share one person, so the groups are the independent draws.
    codes, sample = structured_codes(rng, groups_per_factor=100)
    renderer = LinearRenderer(codes.shape[1], 5)
    sample.images = renderer.decode(codes).astype(np.float32)
    view_groups = selection.same_view_groups(sample)
    np.testing.assert_array_equal(view_groups, sample.groups["identity"])
    references = scores.stranger_references(sample.images, view_groups)
    assert references["stranger_pairs"] == 100 * 15
    stranger = references["stranger_mse"]

    def with_identity(identity_of):
        return lambda batch: renderer.decode(np.concatenate([batch[:, :3], identity_of(batch)], axis=1))

    strangers = np.random.default_rng(6)
    decoders = {"exact": renderer.decode,
                "another person at that view": with_identity(lambda batch: strangers.normal(size=(len(batch), 3))),
                "the mean face at that view": with_identity(lambda batch: np.zeros((len(batch), 3)))}
    expected = {"exact": (1.0, 1e-9), "another person at that view": (0.0, 0.15),
                "the mean face at that view": (0.5, 0.1)}
    for factor in SCENE:
        pairs = selection.novel_view_pairs(sample.groups[factor], 10, seed=3)
        for name, decode in decoders.items():
            mse = scores.novel_view(decode, codes, sample.images, pairs, LAYOUT[factor])[0]
            target, tolerance = expected[name]
            assert scores.identity_retention(mse, stranger) == pytest.approx(target, abs=tolerance), (factor, name)
    # The data's own mean-face reference: the mean of the other 5 people at the view, (G - 2) / (2 (G - 1)).
    assert references["mean_face_retention"] == pytest.approx(4 / 10)
    assert references["mean_face_mse"] == pytest.approx(stranger * 6 / 10)
    assert np.isnan(scores.identity_retention(0.1, float("nan")))


def test_same_view_groups_skip_groups_whose_view_changes():
    rng = np.random.default_rng(7)
    _, sample = structured_codes(rng)
    first = sample.groups["identity"][0]
    sample.factor_values[first[1], 0] += 0.1  # one image of the first identity group turned
    found = selection.same_view_groups(sample)
    assert len(found) == len(sample.groups["identity"]) - 1 and first[0] not in found
    references = scores.stranger_references(sample.images, np.zeros((0, 0), np.int64))
    assert references["stranger_pairs"] == 0 and np.isnan(references["stranger_mse"])


def test_kl_per_latent_and_its_summary():
    means = np.array([[0.0, 1.0, 2.0], [0.0, -1.0, 0.0]])
    log_variances = np.array([[0.0, 0.0, np.log(0.5)], [0.0, 0.0, np.log(0.5)]])
    kl = scores.kl_per_latent(means, log_variances)
    # (mu^2 + sigma^2 - 1 - log sigma^2) / 2, averaged over the two images.
    np.testing.assert_allclose(kl, [0.0, 0.5, (2.0**2 + 2 * (0.5 - 1 - np.log(0.5))) / 4])
    summary = scores.kl_summary(kl, {"azimuth": (0,), "identity": (1, 2)})
    assert summary["total"] == pytest.approx(kl.sum())
    assert summary["active_latents"] == 2
    assert summary["by_factor"] == {"azimuth": 0.0, "identity": pytest.approx(kl[1] + kl[2])}


def test_group_ids_number_every_group_once():
    _, sample = structured_codes(np.random.default_rng(8), groups_per_factor=3, group_size=4)
    ids = sample.group_ids
    assert sorted(set(ids.tolist())) == list(range(12))
    for rows in sample.groups.values():
        for group in rows:
            assert len(set(ids[group].tolist())) == 1


def test_novel_view_pairs_are_distinct_pairs_within_groups_and_reproducible():
    groups = np.arange(30).reshape(5, 6)
    pairs = selection.novel_view_pairs(groups, 4, seed=7)
    assert pairs.shape == (20, 2)
    assert np.all(pairs[:, 0] != pairs[:, 1])
    assert np.all(pairs[:, 0] // 6 == pairs[:, 1] // 6)
    assert len({tuple(pair) for pair in pairs}) == 20
    np.testing.assert_array_equal(pairs, selection.novel_view_pairs(groups, 4, seed=7))
    # A group of 2 has only 2 ordered pairs.
    assert len(selection.novel_view_pairs(np.arange(4).reshape(2, 2), 5, seed=0)) == 4


def test_calibration_recovers_a_known_line_and_round_trips():
    rng = np.random.default_rng(4)
    values = rng.uniform(-1.5, 1.5, 2000)
    latents = -0.8 * values + 0.3 + rng.normal(scale=0.01, size=values.size)
    line = calibration_lib.fit_line(values, latents)
    assert line["slope"] == pytest.approx(-0.8, abs=2e-3)
    assert line["intercept"] == pytest.approx(0.3, abs=2e-3)
    assert line["r2"] > 0.999
    grid = np.linspace(-1.5, 1.5, 7)
    np.testing.assert_allclose(calibration_lib.latent_to_value(line, calibration_lib.value_to_latent(line, grid)),
                               grid, atol=1e-12)
    codes = np.stack([rng.normal(size=values.size), latents], axis=1)
    fitted = calibration_lib.fit_calibration({"azimuth": values}, codes, {"azimuth": 1})
    assert fitted["azimuth"]["latent"] == 1 and fitted["azimuth"]["slope"] == pytest.approx(-0.8, abs=2e-3)
    assert calibration_lib.fit_line(values, np.full(values.size, 2.0))["r2"] == 0.0
    with pytest.raises(calibration_lib.CalibrationError):
        calibration_lib.fit_line(np.ones(10), latents[:10])
    with pytest.raises(calibration_lib.CalibrationError):
        calibration_lib.latent_to_value({"slope": 0.0, "intercept": 1.0}, 1.0)
    with pytest.raises(calibration_lib.CalibrationError):
        calibration_lib.check({"azimuth": {"slope": 1.0, "intercept": 0.0, "latent": 9, "r2": 1.0}}, num_latents=8)


# ---------------------------------------------------------------------------------------------------
# Whole evaluations of tiny runs.

SCORE_KEYS = {"mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness"}


def all_numbers(tree):
    if isinstance(tree, dict):
        return [number for value in tree.values() for number in all_numbers(value)]
    return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def check_run_metrics(metrics, novel_view_is_pair):
    assert set(metrics["equivariance"]) == set(SCENE)
    for factor_scores in metrics["equivariance"].values():
        assert set(factor_scores) == {"pearson", "spearman", "r2"}
    assert set(metrics["invariance"]) == set(FACTORS)
    assert set(metrics["novel_view_mse"]) == set(SCENE)
    for value in metrics["novel_view_mse"].values():
        assert set(value) == {"dcign", "baseline"} if novel_view_is_pair else isinstance(value, float)
    assert set(metrics["disentanglement"]) == SCORE_KEYS
    assert 0 < metrics["test_mse"] < 1
    assert set(metrics["calibration"]) == set(SCENE)
    assert set(metrics["identity_retention"]) == set(SCENE) | {"reconstruction"}
    for value in metrics["identity_retention"].values():
        assert set(value) == {"dcign", "baseline"} if novel_view_is_pair else isinstance(value, float)
    assert set(metrics["kl"]) == {"total", "per_latent", "active_latents", "by_factor"}
    assert len(metrics["kl"]["per_latent"]) == 8 and set(metrics["kl"]["by_factor"]) == set(FACTORS)  # configs/test.flags: 8 latents
    assert metrics["kl"]["total"] == pytest.approx(sum(metrics["kl"]["per_latent"]))
    for section in ("equivariance", "invariance", "novel_view_mse", "identity_retention", "kl", "disentanglement",
                    "calibration"):
        numbers = all_numbers(metrics[section])
        assert numbers and all(np.isfinite(numbers)), section


def test_evaluate_with_baseline_writes_metrics_figures_events_and_calibration(runs, faces_dataset, capsys):
    run, baseline = runs["dcign"], runs["baseline"]
    baseline_info = open(os.path.join(baseline, "export", "model_info.json"), "rb").read()
    code = evaluate.main(["evaluate", f"--workdir={run}", f"--baseline_workdir={baseline}", "--pairs_per_group=3"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "dcign" in printed and "baseline" in printed and "novel_view_mse/azimuth" in printed

    eval_dir = os.path.join(run, "eval")
    metrics = json.load(open(os.path.join(eval_dir, "metrics.json")))
    check_run_metrics(metrics, novel_view_is_pair=True)
    check_run_metrics(metrics["baseline"], novel_view_is_pair=False)
    assert metrics["step"] == 20 and metrics["test_images"] == 32
    assert metrics["latents"]["azimuth"] == 0 and metrics["baseline"]["mode"] == "baseline"
    # Both runs on the same pairs: 2 test groups x 3 pairs per scene factor.
    assert metrics["novel_view_pairs"] == dict.fromkeys(SCENE, 6)
    for factor in SCENE:
        assert metrics["novel_view_mse"][factor]["baseline"] == metrics["baseline"]["novel_view_mse"][factor]
        for label in ("dcign", "baseline"):
            expected = 1 - metrics["novel_view_mse"][factor][label] / metrics["stranger_mse"]
            assert metrics["identity_retention"][factor][label] == pytest.approx(expected)
        assert metrics["baseline"]["identity_retention"][factor] == metrics["identity_retention"][factor]["baseline"]
    # The data's references, once: 2 identity groups of 4 at one view each: 12 pairs; mean face (G-2)/(2(G-1)).
    assert metrics["stranger_pairs"] == 12 and 0 < metrics["stranger_mse"] < 1
    assert metrics["mean_face_retention"] == pytest.approx(1 / 3)
    assert "stranger_mse" not in metrics["baseline"]
    assert metrics["identity_retention"]["reconstruction"]["dcign"] == pytest.approx(
        1 - metrics["test_mse"] / metrics["stranger_mse"])
    settings = metrics["disentanglement_settings"]
    assert set(settings) == {"mig", "sap", "dci"}
    assert settings["dci"]["split"] == "by group" and settings["dci"]["train_points"] % 4 == 0

    names = set(os.listdir(eval_dir))
    expected = ({f"sweep_{f}.png" for f in FACTORS} | {f"baseline_sweep_{f}.png" for f in FACTORS}
                | {f"scatter_{f}.png" for f in SCENE} | {f"novel_view_{f}.png" for f in SCENE})
    assert expected <= names
    assert not [name for name in names if ".tmp-" in name]
    with Image.open(os.path.join(eval_dir, "sweep_azimuth.png")) as sweep:
        cell = 64 + 2  # 32x32 enlarged twice, plus padding
        assert sweep.size == (10 * cell + 2, 14 + 8 * cell + 2)  # input + 9 steps, 8 images, label strip

    accumulator = event_accumulator.EventAccumulator(eval_dir, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["tensors"])
    for tag in ["test_mse", "equivariance/azimuth/spearman", "invariance/identity", "novel_view_mse/light/dcign",
                "disentanglement/mig", "baseline/test_mse", "figures/sweep_light", "figures/novel_view_azimuth",
                "identity_retention/azimuth/dcign", "identity_retention/reconstruction/baseline", "stranger_mse",
                "kl/total", "kl/by_factor/identity", "baseline/kl/active_latents"]:
        assert tag in tags, tag
        assert [event.step for event in accumulator.Tensors(tag)] == [20]
    saved_mse = float(tf.make_ndarray(accumulator.Tensors("test_mse")[0].tensor_proto))
    assert saved_mse == pytest.approx(metrics["test_mse"], rel=1e-5)

    calibration = json.load(open(os.path.join(run, "export", "model_info.json")))["calibration"]
    assert set(calibration) == set(SCENE)
    for factor, line in calibration.items():
        assert line == pytest.approx(metrics["calibration"][factor])
    assert open(os.path.join(baseline, "export", "model_info.json"), "rb").read() == baseline_info


def event_steps(logdir, tag):
    accumulator = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    return [event.step for event in accumulator.Tensors(tag)] if tag in accumulator.Tags()["tensors"] else []


def test_nocalibrate_leaves_the_export_alone_metrics_are_reproducible_and_reruns_add_no_points(runs, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(runs["dcign"], run, ignore=shutil.ignore_patterns("eval"))
    eval_dir = os.path.join(run, "eval")
    # An earlier evaluation at another step (an export before training was extended), and a killed
    # evaluation's staging directory from long ago.
    writer = tf.summary.create_file_writer(eval_dir)
    with writer.as_default():
        tf.summary.scalar("test_mse", 0.5, step=7)
    writer.close()
    stale = os.path.join(eval_dir, report.STAGING_PREFIX + "99999")
    os.makedirs(stale)
    os.utime(stale, (0, 0))
    before = open(os.path.join(run, "export", "model_info.json"), "rb").read()
    settings = evaluation.Settings(groups_per_factor=1, calibrate=False, sweep_images=2, sweep_steps=3)
    first = evaluation.evaluate(run, settings=settings, log=lambda line: None)
    second = evaluation.evaluate(run, settings=settings, log=lambda line: None)
    assert open(os.path.join(run, "export", "model_info.json"), "rb").read() == before
    assert first["test_images"] == 16
    assert all(isinstance(value, float) for value in first["novel_view_mse"].values())
    for key in ("test_mse", "equivariance", "invariance", "novel_view_mse", "identity_retention", "kl",
                "disentanglement"):
        assert first[key] == second[key], key
    # One event file; the other step's point kept, this step's once despite two evaluations.
    assert len([name for name in os.listdir(eval_dir) if "tfevents" in name]) == 1
    assert not [name for name in os.listdir(eval_dir) if name.startswith(report.STAGING_PREFIX)]
    assert event_steps(eval_dir, "test_mse") == [7, 20]
    assert event_steps(eval_dir, "figures/sweep_azimuth") == [20]
    assert event_steps(eval_dir, "kl/total") == [20]
    # One group per factor: 4 groups, split whole (3 : 1 here, the nearest to 2 : 1 in groups of 4).
    dci_settings = first["disentanglement_settings"]["dci"]
    assert dci_settings["train_points"] + dci_settings["test_points"] == 16 and dci_settings["test_points"] % 4 == 0


def test_training_summary_gives_scalars_and_sweep_grids(runs, faces_dataset):
    from dcign_tf import export as export_lib
    from dcign_tf.data import input_pipeline

    model, _ = export_lib.load_model(os.path.join(runs["dcign"], "export"))
    batches = list(input_pipeline.make_dataset(faces_dataset, "test", 2, shuffle=False, repeat=False,
                                               deterministic=True))
    scalars, images = training.training_summary(model, batches, max_images=32, sweep_images=3, sweep_steps=5)
    assert set(scalars) >= {f"equivariance/{f}/{k}" for f in SCENE for k in ("pearson", "spearman", "r2")}
    assert all(isinstance(value, float) for value in scalars.values())
    assert {f"identity_retention/{f}" for f in SCENE} | {"identity_retention/reconstruction", "stranger_mse",
            "mean_face_mse", "kl/total", "kl/active_latents"} | {f"kl/by_factor/{f}" for f in FACTORS} <= set(scalars)
    assert all(np.isfinite(scalars[f"kl/by_factor/{f}"]) for f in FACTORS)
    assert set(images) == {f"sweep/{f}" for f in FACTORS}
    for grid in images.values():
        assert grid.dtype == np.float32 and grid.ndim == 2 and 0 <= grid.min() and grid.max() <= 1
        assert grid.shape == (3 * 34 + 2, 6 * 34 + 2)


# ---------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit status 2, no traceback (all caught before TensorFlow loads).


def mismatched_data(source, target, edit):
    os.makedirs(target)
    info = json.load(open(os.path.join(source, "dataset.json")))
    edit(info)
    json.dump(info, open(os.path.join(target, "dataset.json"), "w"))
    return target


# Lines TensorFlow's C++ logging prints while it loads, whatever TF_CPP_MIN_LOG_LEVEL says.
TF_LOG_PREFIXES = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ", "E0000 ",
                   "To enable the following instructions")


def corrupted_copy(source, target, how):
    """A copy of dataset `source` whose first identity test shard is damaged: "crc" flips bytes mid-file,
    "png" rewrites the first group with an image that is not a PNG (valid CRCs and parsing)."""
    from dcign_tf.data import records

    shutil.copytree(source, target)
    info = records.DatasetInfo.load(str(target))
    path = info.shard_paths(str(target), "test", "identity")[0]
    if how == "crc":
        data = bytearray(open(path, "rb").read())
        for index in range(len(data) // 2, len(data) // 2 + 16):
            data[index] ^= 0xFF
        open(path, "wb").write(bytes(data))
    else:
        serialized = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
        example = tf.train.Example.FromString(serialized[0])
        example.features.feature[records.IMAGES_KEY].bytes_list.value[0] = b"not a png"
        with tf.io.TFRecordWriter(path) as writer:
            for record in [example.SerializeToString()] + serialized[1:]:
                writer.write(record)
    return str(target)


def test_bad_input_is_one_line_and_exit_2(runs, faces_dataset, tmp_path):
    run = runs["dcign"]
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    bigger = mismatched_data(faces_dataset, str(tmp_path / "bigger"), lambda info: info.update(image_size=64))

    def rename_factor(info):
        info["factors"][0]["name"] = "pose"

    renamed = mismatched_data(faces_dataset, str(tmp_path / "renamed"), rename_factor)
    other_dcign = make_run(str(tmp_path / "other_dcign"), faces_dataset, "dcign", seed=2)

    def reseed(info):
        info["generator"]["seed"] = 12345

    other_data = mismatched_data(faces_dataset, str(tmp_path / "other_data"), reseed)
    other_data_baseline = make_run(str(tmp_path / "other_data_baseline"), other_data, "baseline", seed=3)
    bad_crc, bad_png = corrupted_copy(faces_dataset, tmp_path / "bad_crc", "crc"), \
        corrupted_copy(faces_dataset, tmp_path / "bad_png", "png")
    cases = {
        "no such run directory": [f"--workdir={tmp_path / 'missing'}"],
        "has no exported model": [f"--workdir={empty_run}"],
        "takes 32x32 images but": [f"--workdir={run}", f"--data_dir={bigger}"],
        "has factors": [f"--workdir={run}", f"--data_dir={renamed}"],
        "--groups_per_factor must be": [f"--workdir={run}", "--groups_per_factor=-1"],
        "same run": [f"--workdir={run}", f"--baseline_workdir={run}"],
        "--workdir is required": [],
        "Unknown command line flag": [f"--workdir={run}", "--no_such_flag=1"],
        "--full_disentanglement is gone": [f"--workdir={run}", "--full_disentanglement"],
        "is a dcign-mode run": [f"--workdir={run}", f"--baseline_workdir={other_dcign}"],
        "was trained on other data": [f"--workdir={run}", f"--baseline_workdir={other_data_baseline}"],
        # The damaged file is named, not only the data dir.
        f"{os.path.join(bad_png, 'test', 'identity-00000-of-')}": [f"--workdir={run}", f"--data_dir={bad_png}"],
        f"{os.path.join(bad_crc, 'test', 'identity-00000-of-')}": [f"--workdir={run}", f"--data_dir={bad_crc}"],
    }
    processes = {expected: subprocess.Popen([sys.executable, "-m", "dcign_tf.evaluate", *args], cwd=REPO,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for expected, args in cases.items()}
    for expected, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, (expected, stderr[-2000:])
        assert "Traceback" not in stderr + stdout
        # TensorFlow's own start-up lines (cases caught after it loads) are not ours: one error line.
        lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(TF_LOG_PREFIXES)]
        assert len(lines) == 1 and expected in lines[0] and lines[0].startswith("dcign_tf.evaluate: error:"), lines
