"""`python -m dcign_tf.study`: a 2 x 2 study on tiny data, killed and resumed, rerun, summarised from
per-run summaries alone, a failing run, and bad input.

One study is trained for the whole module (4 trainings, 4 evaluations); the other tests read it, or
copy it, or run the runner in-process with its subprocesses replaced."""

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

import pytest
from absl import flags as absl_flags

from dcign_tf import study as study_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELLS = ("dcign+mirror", "baseline")
SEEDS = (0, 1)


def study_args(study_dir, data_dir, *extra):
    return ["--flagfile=configs/study_test.flags", f"--study_dir={study_dir}", "--study_name=study_test",
            f"--train_flags=--data_dir={data_dir} --checkpoint_every=5", *extra]


def run_dir(study_dir, cell, seed):
    return os.path.join(study_dir, cell, f"seed{seed}")


def snapshot(directory):
    """relative path -> (mtime_ns, size) of every file below `directory`."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            stat = os.stat(path)
            out[os.path.relpath(path, directory)] = (stat.st_mtime_ns, stat.st_size)
    return out


def processes_mentioning(text):
    """PIDs of live (not zombie) processes whose command line contains `text`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                cmdline = file.read().decode("utf-8", "replace")
            with open(f"/proc/{entry}/stat") as file:
                state = file.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            pids.append(int(entry))
    return pids


def flatten(metrics, prefix=""):
    """metrics.json's numbers as {"a/b/c": value}, written independently of the runner's code."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def in_process(monkeypatch, capsys, args):
    """Runs the CLI in this process from the repo root; returns (status, stdout, stderr)."""
    monkeypatch.chdir(REPO)
    status = study_lib.main(["dcign_tf.study", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def no_subprocesses(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"launched {args[0] if args else kwargs}")
    monkeypatch.setattr(study_lib.subprocess, "Popen", refuse)


@pytest.fixture(scope="module")
def study(tmp_path_factory, faces_dataset):
    """The test study, killed (SIGKILL to the study process) while a run trains, then run again to the end."""
    root = tmp_path_factory.mktemp("study")
    study_dir, results_dir = str(root / "study"), str(root / "results")
    command = [sys.executable, "-m", "dcign_tf.study",
               *study_args(study_dir, faces_dataset, f"--results_dir={results_dir}", "--parallel=2")]
    log_path = root / "first.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

        def training_with_a_checkpoint():
            # Half-way at most: a run whose last checkpoint is 15 may already be at step 20 (its final
            # evaluation runs before the final checkpoint), and SIGTERM would then let it finish.
            return [(cell, seed) for cell in CELLS for seed in SEEDS
                    if 0 < (study_lib.latest_checkpoint_step(run_dir(study_dir, cell, seed)) or 0) <= 10]

        def some_run_finished():
            return any(os.path.isdir(os.path.join(run_dir(study_dir, cell, seed), "summary"))
                       for cell in CELLS for seed in SEEDS)

        deadline = time.time() + 1200
        while not (some_run_finished() and training_with_a_checkpoint()):
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "no run reached a checkpoint"
            time.sleep(0.02)
        process.kill()
        process.wait()
    # The trainers got SIGTERM when the study died (PR_SET_PDEATHSIG): they save a checkpoint and exit.
    deadline = time.time() + 120
    while processes_mentioning(study_dir):
        assert time.time() < deadline, "a trainer outlived the study"
        time.sleep(0.1)
    # Killed mid-training: a run that had reached its final step when the study died is not one.
    steps = {(cell, seed): study_lib.latest_checkpoint_step(run_dir(study_dir, cell, seed))
             for cell in CELLS for seed in SEEDS}
    killed = {run: step for run, step in steps.items() if step and step < 20}
    finished = [(cell, seed) for cell in CELLS for seed in SEEDS
                if os.path.isdir(os.path.join(run_dir(study_dir, cell, seed), "summary"))]
    before = {run: snapshot(run_dir(study_dir, *run)) for run in finished}

    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    return dict(study_dir=study_dir, results_dir=results_dir, data_dir=faces_dataset, killed=killed,
                finished_before=finished, before=before, first=log_path.read_text(), second=second)


def test_a_killed_study_resumes(study):
    second = study["second"]
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert "Traceback" not in second.stdout + second.stderr
    assert study["killed"] and study["finished_before"]
    # Runs finished before the kill are untouched, down to their checkpoints and event files.
    for run, files in study["before"].items():
        assert snapshot(run_dir(study["study_dir"], *run)) == files, run
    # A killed run resumes from the checkpoint its trainer saved on the way out, not from step 0.
    for (cell, seed), step in study["killed"].items():
        assert 0 < step < 20
        log = open(os.path.join(study["study_dir"], "logs", f"{cell}.seed{seed}.train.log")).read()
        killed_part, resumed_part = log.rsplit("===== ", 1)
        assert "SIGTERM" in killed_part  # from the study's death (PR_SET_PDEATHSIG), not from the test
        assert "resumed from" in resumed_part and f"training from step {step} to 20" in resumed_part
        assert re.search(rf"start +{re.escape(cell)}/seed{seed} +train from step {step} of 20 \(resuming",
                         second.stdout)
    # Every run of the study now has its summary, scored against its baseline where it is a DC-IGN run.
    for cell in CELLS:
        for seed in SEEDS:
            facts = json.load(open(os.path.join(run_dir(study["study_dir"], cell, seed), "summary", "run.json")))
            assert (facts["cell"], facts["seed"], facts["step"]) == (cell, seed, 20)
            assert facts["evaluation"]["baseline"] == (f"baseline/seed{seed}" if cell == "dcign+mirror" else None)
    assert re.search(r"finished  dcign\+mirror/seed\d +train \S+, evaluate \S+ \(\d of 4 finished\)", second.stdout)


def test_summary_holds_every_metric_of_every_run(study):
    summary = json.load(open(os.path.join(study["study_dir"], "summary.json")))
    assert summary["runs"] == {cell: {"0": "finished", "1": "finished"} for cell in CELLS}
    for cell in CELLS:
        per_seed = [flatten(json.load(open(os.path.join(run_dir(study["study_dir"], cell, seed), "eval",
                                                        "metrics.json")))) for seed in SEEDS]
        stats = summary["cells"][cell]["metrics"]
        keys = set(per_seed[0]) & set(per_seed[1])
        assert {"test_mse", "equivariance/azimuth/spearman", "disentanglement/mig"} <= keys
        for key in keys:
            values = [metrics[key] for metrics in per_seed]
            assert stats[key]["n"] == 2, key
            assert stats[key]["per_seed"] == {"0": values[0], "1": values[1]}, key
            assert stats[key]["mean"] == pytest.approx(statistics.fmean(values)), key
            assert stats[key]["sd"] == pytest.approx(statistics.stdev(values)), key
        spearman = [metrics["equivariance/azimuth/spearman"] for metrics in per_seed]
        assert stats["equivariance/azimuth/abs_spearman"]["mean"] == pytest.approx(
            statistics.fmean(abs(value) for value in spearman))
    # DC-IGN runs carry the novel-view numbers of their baseline on the same pairs.
    assert "novel_view_mse/azimuth/dcign" in summary["cells"]["dcign+mirror"]["metrics"]
    baseline_on_pairs = summary["cells"]["dcign+mirror"]["metrics"]["novel_view_mse/azimuth/baseline"]
    assert baseline_on_pairs["mean"] == pytest.approx(
        summary["cells"]["baseline"]["metrics"]["novel_view_mse/azimuth"]["mean"], rel=1e-5)

    markdown = open(os.path.join(study["study_dir"], "summary.md")).read()
    assert "4 of 4 runs finished" in markdown and "![" in markdown
    key = "equivariance/azimuth/abs_spearman"
    row = next(line for line in markdown.splitlines() if line.startswith(f"| `{key}` |"))
    for cell in CELLS:
        cell_stats = summary["cells"][cell]["metrics"][key]
        assert f"{cell_stats['mean']:.4g} ± {cell_stats['sd']:.4g} (2)" in row
    novel = next(line for line in markdown.splitlines() if line.startswith("| `novel_view_mse/azimuth` |"))
    assert f"{summary['cells']['dcign+mirror']['metrics']['novel_view_mse/azimuth/dcign']['mean']:.4g}" in novel
    with open(os.path.join(study["study_dir"], "summary.png"), "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "| `test_mse` |" in study["second"].stdout  # the final table

    # The results dir: the small per-run summaries and the same summary.
    results = study["results_dir"]
    assert json.load(open(os.path.join(results, "summary.json"))) == summary
    for cell in CELLS:
        for seed in SEEDS:
            assert sorted(os.listdir(os.path.join(results, cell, f"seed{seed}"))) == \
                ["flags.txt", "metrics.json", "run.json"]


def test_a_rerun_trains_and_evaluates_nothing(study, monkeypatch, capsys):
    before = snapshot(study["study_dir"])
    results_before = snapshot(study["results_dir"])
    no_subprocesses(monkeypatch)
    status, out, err = in_process(monkeypatch, capsys, study_args(
        study["study_dir"], study["data_dir"], f"--results_dir={study['results_dir']}", "--parallel=2"))
    assert status == 0, err
    assert "0 to do" in out and "finished earlier: baseline/seed0" in out
    assert snapshot(study["study_dir"]) == before
    assert snapshot(study["results_dir"]) == results_before


def test_a_run_finished_but_not_yet_copied_to_the_results_dir_is_copied_on_the_next_start(study, tmp_path,
                                                                                         monkeypatch, capsys):
    """As if the study was killed between a run's summary and its copy into --results_dir."""
    study_dir, results = str(tmp_path / "study"), str(tmp_path / "results")
    shutil.copytree(study["study_dir"], study_dir)
    shutil.copytree(study["results_dir"], results)
    shutil.rmtree(os.path.join(results, "baseline", "seed0"))
    untouched = snapshot(os.path.join(results, "dcign+mirror"))
    no_subprocesses(monkeypatch)
    status, out, err = in_process(monkeypatch, capsys, study_args(study_dir, study["data_dir"],
                                                                  f"--results_dir={results}"))
    assert status == 0 and "0 to do" in out, err
    assert snapshot(os.path.join(results, "baseline", "seed0")) and \
        sorted(os.listdir(os.path.join(results, "baseline", "seed0"))) == ["flags.txt", "metrics.json", "run.json"]
    assert json.load(open(os.path.join(results, "summary.json")))["runs"]["baseline"]["0"] == "finished"
    assert snapshot(os.path.join(results, "dcign+mirror")) == untouched  # copies already there are left alone


def test_summary_is_rebuilt_from_per_run_summaries_alone(study, tmp_path, monkeypatch, capsys):
    original = json.load(open(os.path.join(study["study_dir"], "summary.json")))
    no_subprocesses(monkeypatch)
    # From a results dir (as committed to docs/results/), with no study dir anywhere.
    results = str(tmp_path / "results")
    shutil.copytree(study["results_dir"], results)
    for name in ("summary.json", "summary.md", "summary.png"):
        os.remove(os.path.join(results, name))
    status, out, err = in_process(monkeypatch, capsys, study_args(
        str(tmp_path / "no_study_here"), study["data_dir"], "--summarize_only", f"--results_dir={results}"))
    assert status == 0, err
    assert json.load(open(os.path.join(results, "summary.json"))) == original
    assert os.path.exists(os.path.join(results, "summary.md")) and not os.path.exists(tmp_path / "no_study_here")

    # From a study dir whose checkpoints, exports, events and evaluations are gone.
    slim = str(tmp_path / "study")
    shutil.copytree(study["study_dir"], slim, ignore=shutil.ignore_patterns(
        "checkpoints", "export", "train", "eval", "summary.*"))
    status, _, err = in_process(monkeypatch, capsys, study_args(slim, study["data_dir"], "--summarize_only"))
    assert status == 0, err
    rebuilt = json.load(open(os.path.join(slim, "summary.json")))
    assert rebuilt["cells"] == original["cells"] and rebuilt["runs"] == original["runs"]
    # ... and such a study dir counts as finished: nothing is retrained.
    status, out, err = in_process(monkeypatch, capsys, study_args(slim, study["data_dir"]))
    assert status == 0 and "0 to do" in out, err


def restored_runs(out):
    match = re.search(r"finished on another machine \(summary from [^)]*\): (.*)$", out, flags=re.MULTILINE)
    return set(match.group(1).split(", ")) if match else set()


def test_a_fresh_machine_takes_the_committed_summaries_as_finished(study, tmp_path, monkeypatch, capsys):
    original = json.load(open(os.path.join(study["study_dir"], "summary.json")))
    results = str(tmp_path / "results")
    shutil.copytree(study["results_dir"], results)  # as committed to docs/results/, on a machine without runs/
    no_subprocesses(monkeypatch)
    fresh = str(tmp_path / "fresh")
    status, out, err = in_process(monkeypatch, capsys, study_args(fresh, study["data_dir"], f"--results_dir={results}"))
    assert status == 0, err
    assert restored_runs(out) == {f"{cell}/seed{seed}" for cell in CELLS for seed in SEEDS} and "0 to do" in out
    rebuilt = json.load(open(os.path.join(fresh, "summary.json")))
    assert rebuilt["cells"] == original["cells"] and rebuilt["runs"] == original["runs"]

    # A baseline whose DC-IGN run still has to be evaluated here is trained again: the evaluation needs its export.
    results_missing_one = str(tmp_path / "results_missing_one")
    shutil.copytree(study["results_dir"], results_missing_one)
    shutil.rmtree(os.path.join(results_missing_one, "dcign+mirror", "seed1"))
    other = str(tmp_path / "other")
    status, out, err = in_process(monkeypatch, capsys, study_args(
        other, study["data_dir"], f"--results_dir={results_missing_one}", "--notrain", "--wait_s=0"))
    assert status == 1, err
    assert restored_runs(out) == {"dcign+mirror/seed0", "baseline/seed0"}
    assert not os.path.exists(os.path.join(run_dir(other, "baseline", 1), "summary"))
    assert "2 of 4 runs not finished" in out


def test_a_failed_run_is_recorded_the_others_go_on_and_a_rerun_retries(study, tmp_path, monkeypatch, capsys):
    copy = str(tmp_path / "study")
    shutil.copytree(study["study_dir"], copy)
    for seed in SEEDS:  # both DC-IGN runs need their evaluation again
        shutil.rmtree(os.path.join(run_dir(copy, "dcign+mirror", seed), "summary"))
    untouched = snapshot(run_dir(copy, "baseline", 0))

    def fake_command(fail):
        def command(self, run, stage):
            assert stage == "evaluate"
            metrics = os.path.join(run.dir, "eval", "metrics.json")
            if run.name in fail:
                return [sys.executable, "-c", "import sys; print('boom: bad latent'); sys.exit(3)"]
            return [sys.executable, "-c", f"import os; os.utime({metrics!r})"]
        return command

    monkeypatch.setattr(study_lib.Runner, "command", fake_command({"dcign+mirror/seed0"}))
    status, out, err = in_process(monkeypatch, capsys, study_args(copy, study["data_dir"]))
    assert status == 1, out + err
    assert re.search(r"FAILED +dcign\+mirror/seed0 +evaluate exited 3: boom: bad latent", out)
    assert re.search(r"finished +dcign\+mirror/seed1", out)
    assert "1 of 4 runs not finished: dcign+mirror/seed0" in out
    failure = json.load(open(os.path.join(copy, "logs", "dcign+mirror.seed0.failure.json")))
    assert failure["stage"] == "evaluate" and "boom" in failure["message"]
    summary = json.load(open(os.path.join(copy, "summary.json")))
    assert summary["runs"]["dcign+mirror"] == {"0": "missing", "1": "finished"}
    assert "dcign+mirror/seed0" in summary["failures"]
    assert "## Not finished" in open(os.path.join(copy, "summary.md")).read()
    assert snapshot(run_dir(copy, "baseline", 0)) == untouched

    monkeypatch.setattr(study_lib.Runner, "command", fake_command(set()))
    status, out, err = in_process(monkeypatch, capsys, study_args(copy, study["data_dir"]))
    assert status == 0, out + err
    assert "1 to do" in out and not os.path.exists(os.path.join(copy, "logs", "dcign+mirror.seed0.failure.json"))


def test_notrain_waits_for_runs_trained_elsewhere_then_gives_up(tmp_path, faces_dataset, monkeypatch, capsys):
    monkeypatch.setattr(study_lib, "WAIT_POLL_S", 0.05)
    no_subprocesses(monkeypatch)
    started = time.time()
    status, out, err = in_process(monkeypatch, capsys, study_args(
        str(tmp_path / "study"), faces_dataset, "--notrain", "--wait_s=0.3"))
    assert status == 1 and time.time() - started >= 0.3, err
    waiting = re.findall(r"^\[[\d:]+\] waiting +(\S+) +not evaluated: (.*?) \(", out, flags=re.MULTILINE)
    assert dict(waiting) == {"baseline/seed0": "it is not trained", "baseline/seed1": "it is not trained",
                             "dcign+mirror/seed0": "baseline/seed0 is not trained",
                             "dcign+mirror/seed1": "baseline/seed1 is not trained"}
    assert "4 of 4 runs not finished" in out


def write_definition(study_dir, data_dir, *extra):
    """STUDY_DIR/study.json of the test study (as the runner writes it), nothing else."""
    flag_values = absl_flags.FlagValues()
    study_lib.define_flags(flag_values)
    flag_values(["study", *study_args(study_dir, data_dir, *extra)])
    definition = study_lib.load_study(flag_values)
    study_lib.check_study_home(definition, study_dir, create=True)
    return definition


def foreign_run(study_dir, data_dir):
    """STUDY_DIR holds this study, but baseline/seed0 is a run trained with another --kl_weight."""
    definition = write_definition(study_dir, data_dir)
    run = definition.runs[0]
    os.makedirs(os.path.join(run.dir, "checkpoints"))
    other = study_lib.dataclasses.replace(run.config, kl_weight=2.0)
    with open(os.path.join(run.dir, "flags.txt"), "w") as file:
        file.write(other.to_flagfile())
    with open(os.path.join(run.dir, "checkpoints", "checkpoint"), "w") as file:
        file.write('model_checkpoint_path: "ckpt-10"\n')


def another_study(study_dir, data_dir):
    os.makedirs(study_dir)
    with open(os.path.join(study_dir, "study.json"), "w") as file:
        json.dump({"name": "someone_elses"}, file)


def changed_cell(study_dir, data_dir):
    write_definition(study_dir, data_dir, "--cell=extra: --kl_weight=2")


def not_a_study(study_dir, data_dir):
    os.makedirs(os.path.join(study_dir, "photos"))


BAD_INPUTS = [
    (["--cell=odd: --mode=dcign --bogus_weight=1"], None, "cell 'odd': unknown training flag --bogus_weight"),
    (["--cell=odd: --data_dir=/elsewhere"], None, "cell 'odd': --data_dir cannot be set here"),
    (["--cell=odd: --seed=3"], None, "--seed cannot be set here"),
    (["--cell=odd: --kl_weight=heavy"], None, "cell 'odd': --kl_weight='heavy' is not a valid float"),
    (["--seeds="], None, "--seeds is empty"),
    (["--seeds=0,0"], None, "repeats a seed"),
    (["--cell=baseline: --mode=baseline --kl_weight=2"], None, "two cells are named 'baseline'"),
    ([], another_study, "holds study 'someone_elses'"),
    ([], not_a_study, "is not empty and has no study.json"),
    ([], foreign_run, "holds a run with another config than the study's baseline/seed0 (kl_weight=2.0"),
    (["--cell=extra: --kl_weight=3"], changed_cell, "whose cell 'extra' is '--kl_weight=2'"),
    (["--eval_flags=--groups_per_factor=many"], None, "--eval_flags:"),
    (["--eval_flags=--workdir=/x"], None, "--eval_flags: --workdir is set by the study"),
    (["--baseline_cell=nobody"], None, "--baseline_cell=nobody names no cell"),
    (["--baseline_cell=dcign+mirror"], None, "trains in --mode=dcign; name a --mode=baseline cell"),
    (["--only_index=4"], None, "--only_index=4 is out of range: the study has 4 runs"),
]


@pytest.mark.parametrize("extra, prepare, message", BAD_INPUTS, ids=[case[2][:40] for case in BAD_INPUTS])
def test_bad_input_gets_one_line_and_launches_nothing(tmp_path, faces_dataset, monkeypatch, capsys,
                                                      extra, prepare, message):
    study_dir = str(tmp_path / "study")
    if prepare:
        monkeypatch.chdir(REPO)
        prepare(study_dir, faces_dataset)
    before = snapshot(tmp_path)
    no_subprocesses(monkeypatch)
    status, out, err = in_process(monkeypatch, capsys, [*study_args(study_dir, faces_dataset), *extra])
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("dcign_tf.study: error: "), err
    assert message in err, err
    assert snapshot(tmp_path) == before  # nothing written, nothing created


def test_bad_input_from_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dcign_tf.study", *study_args(
        str(tmp_path / "study"), str(tmp_path / "data"), "--cell=x: --no_such_flag=1")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("dcign_tf.study")]
    assert errors == ["dcign_tf.study: error: cell 'x': unknown training flag --no_such_flag "
                      "(python -m dcign_tf.train --helpfull lists them)"]
    assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "study")


def load_config(path, *extra):
    flag_values = absl_flags.FlagValues()
    study_lib.define_flags(flag_values)
    flag_values(["study", f"--flagfile={path}", *extra])
    return study_lib.load_study(flag_values)


def test_shipped_studies_load(monkeypatch):
    monkeypatch.chdir(REPO)
    quickstart = load_config("configs/study_faces_small.flags")
    assert quickstart.base_flagfile == "configs/faces_small.flags" and quickstart.seeds == [0, 1, 2]
    cells = {cell.name: cell.overrides for cell in quickstart.cells}
    assert cells == {"dcign+mirror": {"mode": "dcign", "mirror_factors": ("azimuth", "light")},
                     "dcign": {"mode": "dcign", "mirror_factors": ()},
                     "baseline+mirror": {"mode": "baseline", "mirror_factors": ("azimuth", "light")},
                     "baseline": {"mode": "baseline", "mirror_factors": ()}}
    assert quickstart.eval_settings["groups_per_factor"] == 0
    assert quickstart.results_dir == "docs/results/study_faces_small"
    runs = {run.name: run for run in quickstart.runs}
    assert len(runs) == 12
    assert runs["dcign/seed2"].config.mirror_factors == () and runs["dcign/seed2"].config.seed == 2
    assert runs["dcign/seed2"].baseline is runs["baseline/seed2"]
    assert runs["baseline+mirror/seed1"].baseline is None
    base_steps = [line for line in open("configs/faces_small.flags") if line.startswith("--steps=")]
    assert [f"--steps={runs['dcign+mirror/seed0'].config.steps}\n"] == base_steps  # the base config's
    tiny = load_config("configs/study_test.flags")
    assert [cell.name for cell in tiny.cells] == list(CELLS) and tiny.seeds == list(SEEDS)
    assert tiny.base_config.image_size == 32


def test_sigterm_reaches_the_trainers(monkeypatch):
    """SIGTERM to the study (a preempted pod) goes on to every running child."""
    class Child:
        def __init__(self):
            self.signals = []

        def send_signal(self, signum):
            self.signals.append(signum)

        def poll(self):
            return None  # still running

    runner = study_lib.Runner.__new__(study_lib.Runner)
    children = [Child(), Child()]
    runner.running = [study_lib.Task(run=None, stage="train", process=child, log_path="", started=0.0)
                      for child in children]
    runner.stopping = None
    runner.on_sigterm(signal.SIGTERM, None)
    assert runner.stopping == "SIGTERM" and [child.signals for child in children] == [[signal.SIGTERM]] * 2
