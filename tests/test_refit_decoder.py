"""tools.refit_decoder: only the decoder changes, the refit lowers its loss on the codes it trains on, the
new run evaluates like any other, RUN is only read, and bad input is one line with exit 2."""

import json
import os

import numpy as np
import pytest

from dcign_tf import evaluate
from dcign_tf import export as export_lib
from tests.test_evaluate import make_run
from tools import refit_decoder


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, faces_dataset):
    return make_run(str(tmp_path_factory.mktemp("refit") / "run"), faces_dataset)


def weights(export_dir):
    model, _ = export_lib.load_model(export_dir)
    return [w.copy() for w in model.encoder.get_weights()], [w.copy() for w in model.decoder.get_weights()]


@pytest.mark.parametrize("codes", refit_decoder.CODES)
def test_only_the_decoder_changes_and_its_loss_falls(source_run, tmp_path, codes, capsys):
    before = {name: os.path.getmtime(os.path.join(root, name)) for root, _, names in os.walk(source_run)
              for name in names}
    out = str(tmp_path / f"refit_{codes}")
    assert refit_decoder.main([refit_decoder.PROGRAM, f"--workdir={source_run}", f"--out={out}", "--steps=20",
                               "--learning_rate=3e-3", f"--codes={codes}", "--log_every=5"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    losses = [float(line.split("reconstruction ")[1].split()[0]) for line in lines]
    assert len(losses) == 4 and losses[-1] < losses[0], losses  # an untrained decoder learns within 20 steps

    encoder_before, decoder_before = weights(os.path.join(source_run, "export"))
    encoder_after, decoder_after = weights(os.path.join(out, "export"))
    assert all(np.array_equal(a, b) for a, b in zip(encoder_before, encoder_after))
    assert any(not np.array_equal(a, b) for a, b in zip(decoder_before, decoder_after))
    info = export_lib.read_info(os.path.join(out, "export"))
    assert info["refit"]["codes"] == codes and info["refit"]["steps"] == 20
    flag_lines = open(os.path.join(out, "flags.txt")).read().splitlines()
    source_lines = open(os.path.join(source_run, "flags.txt")).read().splitlines()
    assert f"--workdir={out}" in flag_lines
    assert [line for line in flag_lines if not line.startswith("--workdir=")] == [
        line for line in source_lines if not line.startswith("--workdir=")]
    assert info["calibration"] is None
    assert "tools.refit_decoder" in open(os.path.join(out, "COMMAND")).read()
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]
    after = {name: os.path.getmtime(os.path.join(root, name)) for root, _, names in os.walk(source_run)
             for name in names}
    assert after == before  # RUN is only read

    if codes == "clamped":
        return
    # The new run is an ordinary run to evaluate: same latents, the refit decoder's reconstructions.
    assert evaluate.main([evaluate.PROGRAM, f"--workdir={out}", "--groups_per_factor=1", "--sweep_images=2",
                          "--sweep_steps=3", "--fast_disentanglement", "--nocalibrate"]) == 0
    metrics = json.load(open(os.path.join(out, "eval", "metrics.json")))
    assert "reconstruction" in metrics["identity_retention"]


def test_the_clamped_codes_are_not_the_single_ones(source_run, faces_dataset):
    """The same seed, batches and start: only the codes differ, and so does the decoder after one step."""
    from dcign_tf.data import input_pipeline

    decoders = {}
    for codes in refit_decoder.CODES:
        model, _ = export_lib.load_model(os.path.join(source_run, "export"))
        batches = input_pipeline.make_dataset(faces_dataset, "train", 2, seed=0, shuffle_buffer=16)
        refit_decoder.refit(model, batches, 1, 1e-3, codes, seed=0, log_every=1, log=lambda line: None)
        decoders[codes] = model.decoder.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(decoders["single"], decoders["clamped"]))


def test_a_new_decoder_of_other_widths_keeps_the_encoder(source_run, tmp_path):
    out = str(tmp_path / "wide")
    assert refit_decoder.main([refit_decoder.PROGRAM, f"--workdir={source_run}", f"--out={out}", "--steps=2",
                               "--decoder_filters=12,10,6"]) == 0
    model, info = export_lib.load_model(os.path.join(out, "export"))
    assert model.config.decoder_filters == (12, 10, 6) and info["refit"]["new_decoder"]
    assert "--decoder_filters=12,10,6" in open(os.path.join(out, "flags.txt")).read().splitlines()
    encoder_before, _ = weights(os.path.join(source_run, "export"))
    assert all(np.array_equal(a, b) for a, b in zip(encoder_before, model.encoder.get_weights()))


def test_bad_input_is_one_line_and_exit_2(source_run, tmp_path, capsys):
    cases = [
        ([], "--workdir=RUN and --out=NEW_RUN"),
        ([f"--workdir={tmp_path / 'nothing'}", f"--out={tmp_path / 'o'}"], "is missing"),
        ([f"--workdir={source_run}", f"--out={source_run}"], "exists"),
        ([f"--workdir={source_run}", f"--out={tmp_path / 'o'}", "--codes=mean"], "codes"),
        ([f"--workdir={source_run}", f"--out={tmp_path / 'o'}", "--steps=0"], "steps"),
        ([f"--workdir={source_run}", f"--out={tmp_path / 'o'}", "--decoder_filters=8,8"], "three positive widths"),
        ([f"--workdir={source_run}", f"--out={tmp_path / 'o'}", "--decoder_filters=8,x,8"], "decoder_filters"),
    ]
    for args, expected in cases:
        assert refit_decoder.main([refit_decoder.PROGRAM, *args]) == 2, args
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err, (args, err)
    assert not os.path.exists(tmp_path / "o")
