"""The benchmark's report (a smoke run of `python -m benchmarks.bench --size=tiny` from the repository root, as a
fresh clone runs it) and the honesty of its PyTorch comparison.

No timed assertions: the machine may be shared. The smoke test checks the report's shape and arithmetic;
the equivalence tests check that the PyTorch reference computes the Keras network's function and
training signal, so that the comparison is between two implementations of the same thing.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from benchmarks import bench
from benchmarks.harness import FACTORS, LAYOUT
from benchmarks.sections.torch_comparison import import_torch_reference
from benchmarks.timing import comparison

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Numbers that may legitimately be zero or absent-as-null.
NON_NEGATIVE = {"dataset_generation_s"}
NULLABLE = {"dataset_generation_s", "steps_peak_rss_mib", "data_dir"}


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--size=tiny", f"--out={out}", "--markdown"],
                               capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    with open(out, encoding="utf-8") as file:
        return json.load(file), completed.stdout, str(out)


def _numbers(value, key=""):
    """(key, number) for every number in a JSON value, recursively (booleans excluded)."""
    if isinstance(value, dict):
        for child_key, child in value.items():
            yield from _numbers(child, child_key)
    elif isinstance(value, list):
        for child in value:
            yield from _numbers(child, key)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield key, value


def _comparisons(value):
    if isinstance(value, dict):
        if "ratio" in value:
            yield value
        for child in value.values():
            yield from _comparisons(child)
    elif isinstance(value, list):
        for child in value:
            yield from _comparisons(child)


def test_tiny_report_has_every_section_with_consistent_numbers(tiny_report):
    report, stdout, _ = tiny_report
    machine = report["machine"]
    for field in ("cpu_model", "cores", "tensorflow", "keras", "threads", "tf_intra_op_threads"):
        assert machine[field], field
    assert machine["threads"] == 2 and machine["tf_intra_op_threads"] == 2

    for section in bench.SECTIONS:
        block = report[section]
        assert block["status"] in ("ok", "skipped"), (section, block.get("reason"), block.get("traceback"))
        if block["status"] == "skipped":
            assert block["reason"], section
            continue
        assert block["method"] and block["results"], section
        for key, number in _numbers(block["results"]):
            assert math.isfinite(number), (section, key, number)
            if key in NON_NEGATIVE:
                assert number >= 0, (section, key, number)
            else:
                assert number > 0, (section, key, number)
        for result in block["results"]:
            assert result["measurements"], section
            for name, entry in result["measurements"].items():
                for key, value in entry.items():
                    assert value is not None or key in NULLABLE, (section, name, key)
                if "target" in entry:
                    rate = entry["images_per_s"]
                    assert entry["met"] == (rate >= entry["target"]), (section, name)
                if "target_ms" in entry:  # an upper bound
                    assert entry["met"] == (entry["ms_per_render"] <= entry["target_ms"]), (section, name)
            for entry in result["comparisons"]:
                assert entry["ratio"] == pytest.approx(entry["numerator_value"] / entry["denominator_value"],
                                                       rel=1e-12), (section, entry["name"])
                if "target" in entry:
                    assert entry["met"] == (entry["ratio"] >= entry["target"]), (section, entry["name"])

    # Ratios with targets are where the brief asks for them.
    with_targets = {entry["name"] for entry in _comparisons(report) if "target" in entry}
    assert any(name.startswith("clamp_") for name in with_targets)
    assert "train_pipeline_vs_memory" in with_targets
    assert {"render_64", "render_150"} <= set(report["renderer"]["results"][0]["measurements"])
    flops = report["flops"]["results"][0]
    assert {"paper_architecture", "subpixel_executed"} <= set(flops["flops_per_image"])
    counts = flops["flops_per_image"]
    assert counts["paper_architecture"]["train"] > counts["subpixel_executed"]["train"]
    assert {"matmul_float32", "float32"} <= set(flops["measurements"])
    # The studio's render latency (issue 15), on the tiny network at 32x32.
    assert report["studio"]["status"] == "ok", report["studio"].get("reason")
    (studio,) = report["studio"]["results"]
    move = studio["measurements"]["slider_move"]
    assert studio["image_size"] == 32 and move["renders"] == 5 and move["target_ms"] == 100.0
    assert "studio" in stdout and "ms per slider move" in stdout

    try:
        import torch  # noqa: F401 - only whether it is installed
    except ImportError:
        assert report["torch"]["status"] == "skipped" and "PyTorch" in report["torch"]["reason"]
    else:
        assert report["torch"]["status"] == "ok"
        result = report["torch"]["results"][0]
        assert {"keras", "torch_eager"} <= set(result["measurements"])
        assert "torch_compile" in result["measurements"] or result.get("torch_compile_error") or result.get(
            "torch_compile_skipped")

    assert "| section | measurement | value | ratio | target | met |" in stdout
    assert "clamp" in stdout and "dcign / baseline" in stdout


def test_render_reprints_a_saved_report(tiny_report, capsys):
    _, stdout, path = tiny_report
    assert bench.main([bench.PROGRAM, f"--render={path}", "--markdown"]) == 0
    printed = capsys.readouterr().out
    assert bench.format_table(json.load(open(path, encoding="utf-8"))) in printed
    assert printed.strip() == stdout.strip()


def test_arguments_are_checked(tmp_path, capsys):
    assert bench.main([bench.PROGRAM, "--out=x.json", "--sections=clamp,bogus"]) == 2
    assert bench.main([bench.PROGRAM]) == 2  # --out is required
    assert bench.main([bench.PROGRAM, f"--render={tmp_path / 'missing.json'}"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith(f"{bench.PROGRAM}: error: ") for line in errors), errors
    assert "unknown sections ['bogus']" in errors[0] and "--out" in errors[1] and "missing.json" in errors[2]
    flag_values = flags.FlagValues()
    bench.define_flags(flag_values)
    flag_values([bench.PROGRAM, "--out=x.json", "--sections=clamp, growth", "--size=tiny"])
    assert bench.arguments(flag_values).sections == ["clamp", "growth"]


def test_comparison_is_the_quotient_and_checks_its_target():
    entry = comparison("x", "a", 3.0, "b", 4.0, target=0.95)
    assert entry["ratio"] == 0.75 and entry["met"] is False
    assert "target" not in comparison("y", "a", 1.0, "b", 1.0)


def test_layout_and_factors_are_the_faces_datasets():
    from dcign_tf.data.sources import faces
    from dcign_tf.latents import LatentLayout

    assert tuple(FACTORS) == faces.FACTOR_NAMES
    LatentLayout.parse(LAYOUT, 8).check_factors(list(FACTORS))  # raises unless the layout names exactly them


# ---------------------------------------------------------------------------------------------------------------
# The PyTorch reference computes the same function as the Keras network.


def _keras_model(image_size, mode):
    from dcign_tf.model import DCIGN, ModelConfig

    # Unequal widths, so that a transposed kernel or a flatten in the wrong order cannot go unnoticed.
    return DCIGN(list(FACTORS), ModelConfig(latent_layout=LAYOUT, image_size=image_size, num_latents=8,
                                      encoder_filters=(4, 6, 5), decoder_filters=(5, 6, 3), mode=mode,
                                      invariance_weight=0.5, seed=3))


def _close(actual, expected, tolerance=1e-4):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance * scale)


@pytest.mark.parametrize("image_size,mode", [(32, "dcign"), (64, "dcign"), (64, "baseline")])
def test_torch_reference_matches_the_keras_network(image_size, mode):
    torch = pytest.importorskip("torch")
    import tensorflow as tf

    _, reference = import_torch_reference()
    keras_model = _keras_model(image_size, mode)
    rng = np.random.default_rng(7)
    groups, group_size = 2, 3
    images = rng.uniform(size=(groups, group_size, image_size, image_size, 1)).astype(np.float32)
    active = np.array([0, 3], np.int32)  # one group varies azimuth (latent 0), one identity (latents 3-7)
    noise = rng.normal(size=(groups, group_size, 8)).astype(np.float32)

    terms, gradients = keras_model.compute_gradients({"images": images, "active_factor": active},
                                                     noise=tf.constant(noise))
    reconstructions = keras_model(images.reshape(-1, image_size, image_size, 1)).numpy()

    torch_model = reference.from_keras(keras_model)
    torch_images = torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, 2)))
    torch_terms = torch_model.terms(torch_images, torch.from_numpy(active.astype(np.int64)), torch.from_numpy(noise))
    torch_terms["loss"].backward()
    with torch.no_grad():
        mean, _ = torch_model.encoder(torch_images.reshape(-1, 1, image_size, image_size))
        torch_reconstructions = torch.sigmoid(torch_model.decoder(mean)).numpy()

    _close(torch_reconstructions, np.moveaxis(reconstructions, -1, 1))
    _close(torch_terms["mean"].detach().numpy(), terms["mean"].numpy())
    _close(torch_terms["log_variance"].detach().numpy(), terms["log_variance"].numpy())
    _close(torch_terms["reconstruction"].detach().numpy(), terms["reconstruction"].numpy())
    _close(torch_terms["kl"].detach().numpy(), terms["kl"].numpy())
    _close(torch_terms["loss"].item(), terms["loss"].numpy())
    # The training signal too: the clamp's forward and the rewritten gradients of every weight.
    keras_gradients = reference.keras_to_torch_arrays(
        keras_model, torch_model, {variable.path: gradient.numpy()
                                   for variable, gradient in zip(keras_model.trainable_variables, gradients)})
    for name, parameter in torch_model.named_parameters():
        _close(parameter.grad.numpy(), keras_gradients[name])


def test_torch_optimizer_matches_the_keras_optimizer():
    torch = pytest.importorskip("torch")
    import tensorflow as tf

    from dcign_tf.optimizer import DCIGNRMSprop

    _, reference = import_torch_reference()
    rng = np.random.default_rng(0)
    start = rng.normal(size=(5, 4)).astype(np.float32)
    keras_variable = tf.Variable(start)
    keras_optimizer = DCIGNRMSprop(learning_rate=0.01)
    torch_parameter = torch.nn.Parameter(torch.from_numpy(start.copy()))
    torch_optimizer = reference.DCIGNRMSprop([torch_parameter], lr=0.01)
    for _ in range(4):
        gradient = rng.normal(size=start.shape).astype(np.float32)
        keras_optimizer.apply([tf.constant(gradient)], [keras_variable])
        torch_parameter.grad = torch.from_numpy(gradient)
        torch_optimizer.step()
    np.testing.assert_allclose(torch_parameter.detach().numpy(), keras_variable.numpy(), rtol=1e-5, atol=1e-6)
