"""dcign_tf.evaluate: the metric wiring on constructed latents with known answers, the calibration,
a whole evaluation of tiny exported runs (metrics.json, figures, TensorBoard events), and bad input."""

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
    train.write_flags(config)
    keras.utils.set_random_seed(seed)
    model = DCIGN(**config.model_kwargs(info.factor_names))
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
    return evaluate.sample_from_groups(images, list(values_per_group), list(group_factors), FACTORS, scene)


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
    assert evaluate.choose_latents(swapped, sample.groups, LAYOUT, "dcign")["azimuth"] == 0
    # Several latents (identity): its most variable one within identity groups.
    identity_heavy = codes.copy()
    identity_heavy[:, 4] *= 10.0
    assert evaluate.choose_latents(identity_heavy, sample.groups, LAYOUT, "dcign")["identity"] == 4
    # Baseline: every latent is a candidate; each scene factor's own latent varies most in its groups.
    permutation = [4, 2, 5, 0, 1, 3]  # new column k holds old latent permutation[k]
    chosen = evaluate.choose_latents(codes[:, permutation], sample.groups, LAYOUT, "baseline")
    assert [chosen[f] for f in SCENE] == [permutation.index(0), permutation.index(1), permutation.index(2)]
    variance = evaluate.within_group_variance(codes, sample.groups["azimuth"])
    assert variance[0] > 0 and np.allclose(variance[1:], 0)


def test_own_latents_for_dcign_and_baseline():
    chosen = {"azimuth": 4, "elevation": 1, "light": 0, "identity": 2}
    assert evaluate.own_latents(LAYOUT, "dcign", chosen, SCENE, 6) == {
        "azimuth": (0,), "elevation": (1,), "light": (2,), "identity": (3, 4, 5)}
    assert evaluate.own_latents(LAYOUT, "baseline", chosen, SCENE, 6) == {
        "azimuth": (4,), "elevation": (1,), "light": (0,), "identity": (2, 3, 5)}


def test_invariance_and_equivariance_wiring_on_a_perfect_code():
    rng = np.random.default_rng(1)
    codes, sample = structured_codes(rng)
    chosen = evaluate.choose_latents(codes, sample.groups, LAYOUT, "dcign")
    own = evaluate.own_latents(LAYOUT, "dcign", chosen, SCENE, 6)
    # The other factors' latents never move within a group: perfect invariance.
    assert evaluate.invariance_scores(codes, sample, own) == pytest.approx(dict.fromkeys(FACTORS, 0.0), abs=1e-12)
    scores = evaluate.equivariance_scores(codes, sample, chosen)
    for factor in SCENE:
        assert scores[factor]["pearson"] == pytest.approx(1.0)
        assert scores[factor]["r2"] == pytest.approx(1.0)
    # Mix the azimuth signal into the elevation latent: azimuth groups now move another factor's latent.
    leaky = codes.copy()
    leaky[:, 1] += codes[:, 0]
    assert evaluate.invariance_scores(leaky, sample, own)["azimuth"] > 0.1
    assert evaluate.invariance_scores(leaky, sample, own)["light"] == pytest.approx(0.0, abs=1e-12)
    # The wrong latent for light (elevation's) does not track light.
    assert abs(evaluate.equivariance_scores(codes, sample, {**chosen, "light": 1})["light"]["pearson"]) < 0.5


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
        pairs = evaluate.novel_view_pairs(sample.groups[factor], 4, seed=3)
        mse, rendered = evaluate.novel_view(renderer.decode, codes, images, pairs, LAYOUT[factor])
        assert mse == pytest.approx(0.0, abs=1e-12)  # float32 rounding only
        assert rendered.shape == (len(pairs), 5, 5, 1)
        # Swapping another factor's latent leaves the input's pose: the target is missed.
        wrong = next(f for f in SCENE if f != factor)
        assert evaluate.novel_view(renderer.decode, codes, images, pairs, LAYOUT[wrong])[0] > 1e-4


def test_novel_view_pairs_are_distinct_pairs_within_groups_and_reproducible():
    groups = np.arange(30).reshape(5, 6)
    pairs = evaluate.novel_view_pairs(groups, 4, seed=7)
    assert pairs.shape == (20, 2)
    assert np.all(pairs[:, 0] != pairs[:, 1])
    assert np.all(pairs[:, 0] // 6 == pairs[:, 1] // 6)
    assert len({tuple(pair) for pair in pairs}) == 20
    np.testing.assert_array_equal(pairs, evaluate.novel_view_pairs(groups, 4, seed=7))
    # A group of 2 has only 2 ordered pairs.
    assert len(evaluate.novel_view_pairs(np.arange(4).reshape(2, 2), 5, seed=0)) == 4


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
    for scores in metrics["equivariance"].values():
        assert set(scores) == {"pearson", "spearman", "r2"}
    assert set(metrics["invariance"]) == set(FACTORS)
    assert set(metrics["novel_view_mse"]) == set(SCENE)
    for value in metrics["novel_view_mse"].values():
        assert set(value) == {"dcign", "baseline"} if novel_view_is_pair else isinstance(value, float)
    assert set(metrics["disentanglement"]) == SCORE_KEYS
    assert 0 < metrics["test_mse"] < 1
    assert set(metrics["calibration"]) == set(SCENE)
    for section in ("equivariance", "invariance", "novel_view_mse", "disentanglement", "calibration"):
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
                "disentanglement/mig", "baseline/test_mse", "figures/sweep_light", "figures/novel_view_azimuth"]:
        assert tag in tags, tag
        assert [event.step for event in accumulator.Tensors(tag)] == [20]
    saved_mse = float(tf.make_ndarray(accumulator.Tensors("test_mse")[0].tensor_proto))
    assert saved_mse == pytest.approx(metrics["test_mse"], rel=1e-5)

    calibration = json.load(open(os.path.join(run, "export", "model_info.json")))["calibration"]
    assert set(calibration) == set(SCENE)
    for factor, line in calibration.items():
        assert line == pytest.approx(metrics["calibration"][factor])
    assert open(os.path.join(baseline, "export", "model_info.json"), "rb").read() == baseline_info


def test_nocalibrate_leaves_the_export_alone_and_metrics_are_reproducible(runs, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(runs["dcign"], run, ignore=shutil.ignore_patterns("eval"))
    before = open(os.path.join(run, "export", "model_info.json"), "rb").read()
    settings = evaluate.Settings(groups_per_factor=1, calibrate=False, sweep_images=2, sweep_steps=3)
    first = evaluate.evaluate(run, settings=settings, log=lambda line: None)
    second = evaluate.evaluate(run, settings=settings, log=lambda line: None)
    assert open(os.path.join(run, "export", "model_info.json"), "rb").read() == before
    assert first["test_images"] == 16
    assert all(isinstance(value, float) for value in first["novel_view_mse"].values())
    for key in ("test_mse", "equivariance", "invariance", "novel_view_mse", "disentanglement"):
        assert first[key] == second[key], key


def test_training_summary_gives_scalars_and_sweep_grids(runs, faces_dataset):
    from dcign_tf import export as export_lib
    from dcign_tf.data import input_pipeline

    model, _ = export_lib.load_model(os.path.join(runs["dcign"], "export"))
    batches = list(input_pipeline.make_dataset(faces_dataset, "test", 2, shuffle=False, repeat=False,
                                               deterministic=True))
    scalars, images = evaluate.training_summary(model, batches, max_images=32, sweep_images=3, sweep_steps=5)
    assert set(scalars) >= {f"equivariance/{f}/{k}" for f in SCENE for k in ("pearson", "spearman", "r2")}
    assert all(isinstance(value, float) for value in scalars.values())
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


def test_bad_input_is_one_line_and_exit_2(runs, faces_dataset, tmp_path):
    run = runs["dcign"]
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    bigger = mismatched_data(faces_dataset, str(tmp_path / "bigger"), lambda info: info.update(image_size=64))

    def rename_factor(info):
        info["factors"][0]["name"] = "pose"

    renamed = mismatched_data(faces_dataset, str(tmp_path / "renamed"), rename_factor)
    cases = {
        "no such run directory": [f"--workdir={tmp_path / 'missing'}"],
        "has no exported model": [f"--workdir={empty_run}"],
        "takes 32x32 images but": [f"--workdir={run}", f"--data_dir={bigger}"],
        "has factors": [f"--workdir={run}", f"--data_dir={renamed}"],
        "--groups_per_factor must be": [f"--workdir={run}", "--groups_per_factor=-1"],
        "same run": [f"--workdir={run}", f"--baseline_workdir={run}"],
        "--workdir is required": [],
        "Unknown command line flag": [f"--workdir={run}", "--no_such_flag=1"],
    }
    processes = {expected: subprocess.Popen([sys.executable, "-m", "dcign_tf.evaluate", *args], cwd=REPO,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for expected, args in cases.items()}
    for expected, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert process.returncode == 2, (expected, stderr)
        assert len(lines) == 1 and expected in lines[0] and lines[0].startswith("dcign_tf.evaluate: error:"), lines
        assert "Traceback" not in stderr + stdout
