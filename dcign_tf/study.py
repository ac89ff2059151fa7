r"""Runs a study: named cells of training flags x seeds, each run trained and evaluated alike, then summarised.

    python -m dcign_tf.study --flagfile=configs/study_faces_small.flags [--parallel=2]

A study is described in a flagfile:

    --base_flagfile=configs/faces_small.flags        the training config every run starts from
    --cell=dcign+mirror: --mode=dcign --mirror_factors=azimuth,light
    --cell=baseline: --mode=baseline --mirror_factors=
    --baseline_cell=baseline                         dcign-mode cells are evaluated against it
    --seeds=0,1,2
    --eval_flags=--groups_per_factor=0               passed to every dcign_tf.evaluate
    --study_dir=runs/study_faces_small
    --results_dir=docs/results/study_faces_small     the small per-run summaries, to commit

A cell is `NAME: FLAGS`: FLAGS are dcign_tf.train flags (split like a shell line; `--name=` is an
empty value), applied after --base_flagfile and --train_flags. Cells may not set the run's place
(--workdir, --seed, --overwrite) or its dataset (--data_dir, --dataset, --face_model, --image_size,
--group_size, --dataset_*): every cell trains on the base config's dataset.

Every (cell, seed) is an ordinary run directory, STUDY_DIR/<cell>/seed<k>, trained by
`python -m dcign_tf.train --flagfile=BASE <train_flags> <cell flags> --workdir=RUN --seed=k` and
evaluated by `python -m dcign_tf.evaluate --workdir=RUN <eval_flags>`, with
`--baseline_workdir=STUDY_DIR/<baseline_cell>/seed<k>` for the cells in dcign mode (novel views).

    STUDY_DIR/study.json                   the study's definition; a dir holding another study is refused
    STUDY_DIR/<cell>/seed<k>/              the run: flags.txt, checkpoints/, train/, export/, eval/
    STUDY_DIR/<cell>/seed<k>/summary/      written when the run is finished: metrics.json, flags.txt, run.json
    STUDY_DIR/logs/<cell>.seed<k>.{train,evaluate}.log, <cell>.seed<k>.failure.json
    STUDY_DIR/summary.json, summary.md, summary.png
    RESULTS_DIR/study.json, <cell>/seed<k>/{metrics.json,flags.txt,run.json}, summary.{json,md,png}

Running the same command again resumes: a finished run (its summary matches the study's training
config, step count and evaluation) is neither retrained nor re-evaluated, a trained run is only
evaluated, and a killed run resumes from its last checkpoint. With --results_dir, a run that is not
in STUDY_DIR but whose summary there matches (committed from another machine) is finished too; its
summary is copied into its run directory (a baseline that a run still to evaluate needs is retrained). A run directory holding a run with
another config is refused, never reused. If the study process dies, its trainers get SIGTERM and
save a checkpoint. A failed run does not stop the others; the exit status says it failed, and the
next run of the command retries it.

summary.json, for every cell and every numeric key of metrics.json (flattened, "a/b/c"): the mean,
the sample standard deviation (null for one seed), the number of seeds n and the per-seed values;
`.../abs_spearman` and `.../abs_pearson` are added next to each correlation (its absolute value per
seed: a latent may encode its factor with either sign). It is rebuilt from per-run summaries alone:
`--summarize_only` (with --results_dir: from RESULTS_DIR, after copying any finished runs into it).

On a cluster, `--only_index=i` runs only run i (`--list_runs` prints the indexes) and `--notrain`
evaluates runs trained elsewhere; k8s/overlays/study combines the two.

Exit status: 0 when every run of the invocation is finished; 1 when a run failed or is missing (the
summary covers the finished ones); 2 with one line on stderr for bad input (an unknown or forbidden
cell flag, an empty seed list, two cells with one name, a study dir holding another study, a run
directory holding another run); 143 on SIGTERM, after the trainers saved a checkpoint.
"""

from __future__ import annotations

import dataclasses
import datetime
import filecmp
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Mapping, Sequence

from absl import flags

from dcign_tf import cli
from dcign_tf import config as config_lib
from dcign_tf import evaluate as evaluate_lib
from dcign_tf.analysis import evaluation as evaluation_lib
from dcign_tf.analysis import report as report_lib
from dcign_tf.analysis import selection as selection_lib
from dcign_tf import export as export_lib
from dcign_tf import io_utils
from dcign_tf import workdir as workdir_lib
from dcign_tf.data import records

PROGRAM = "dcign_tf.study"
STUDY_FILE = "study.json"
SUMMARY_JSON, SUMMARY_MD, SUMMARY_FIGURE = "summary.json", "summary.md", "summary.png"
RUN_SUMMARY_DIR = "summary"  # inside a run directory
RUN_FILE = "run.json"  # the run's facts in its summary: cell, seed, step, evaluation, seconds
FLAGS_FILE = workdir_lib.FLAGS_FILE
LOGS_DIR = "logs"
# Set by the study for every run, so a cell or --train_flags may not.
STUDY_CONTROLLED = {"workdir", "seed", "overwrite"}
# What defines the dataset: every cell shares the base config's.
DATASET_FIELDS = {"data_dir", "dataset", "face_model", "image_size", "group_size"}
EVAL_CONTROLLED = {"workdir", "baseline_workdir", "data_dir"}
DEFAULT_HEADLINE = ["equivariance/azimuth/abs_spearman", "equivariance/elevation/abs_spearman",
                    "equivariance/light/abs_spearman", "identity_retention/azimuth", "identity_retention/elevation",
                    "identity_retention/light", "identity_retention/reconstruction", "novel_view_mse/azimuth",
                    "novel_view_mse/light", "novel_view_mse/elevation", "disentanglement/mig", "disentanglement/sap",
                    "disentanglement/dci_disentanglement", "disentanglement/dci_completeness",
                    "disentanglement/dci_informativeness", "test_mse"]
CELL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
EXIT_FAILED, EXIT_TERMINATED, EXIT_INTERRUPTED = 1, 143, 130
POLL_S = 0.2  # how often running trainers and evaluations are checked
WAIT_POLL_S = 30.0  # how often --wait_s looks for runs trained elsewhere
# Run as `python -c LAUNCHER STUDY_PID -m dcign_tf.train ...` on Linux: the child asks for SIGTERM
# when the study dies (a trainer then saves a checkpoint), instead of training on as an orphan.
LAUNCHER = ("import ctypes, os, signal, sys\n"
            "ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
            "if os.getppid() != int(sys.argv[1]):\n"
            "    sys.exit(143)  # the study died before prctl\n"
            "os.execv(sys.executable, [sys.executable] + sys.argv[2:])\n")


class StudyError(ValueError):
    """A study definition, study dir or run directory that cannot be used; one line saying what to fix."""


# ---------------------------------------------------------------------------------------------------
# The definition.


@dataclasses.dataclass(frozen=True)
class Cell:
    """A named set of training flag overrides. flags: the tokens as written; overrides: field -> value."""

    name: str
    flags: tuple[str, ...]
    overrides: Mapping[str, object]

    @property
    def flags_text(self) -> str:
        return " ".join(shlex.quote(token) for token in self.flags)


@dataclasses.dataclass(frozen=True)
class Run:
    """One (cell, seed). index: its position in the study's run order (--only_index, the k8s pod index)."""

    index: int
    cell: Cell
    seed: int
    dir: str
    config: config_lib.TrainConfig
    baseline: "Run | None"  # the run whose export is the evaluation's --baseline_workdir

    @property
    def name(self) -> str:
        return f"{self.cell.name}/seed{self.seed}"

    @property
    def log_stem(self) -> str:
        return f"{self.cell.name}.seed{self.seed}"


@dataclasses.dataclass
class Study:
    name: str
    study_dir: str
    results_dir: str
    base_flagfile: str
    train_flags: tuple[str, ...]
    cells: list[Cell]
    seeds: list[int]
    baseline_cell: str
    eval_flags: tuple[str, ...]
    eval_settings: dict
    base_config: config_lib.TrainConfig  # the base flagfile with --train_flags applied
    runs: list[Run] = dataclasses.field(default_factory=list)

    def definition(self) -> dict:
        """study.json: what makes this study this study (paths where runs live are not part of it)."""
        return {"name": self.name, "base_flagfile": self.base_flagfile, "train_flags": list(self.train_flags),
                "base_config": identity_fields(self.base_config), "steps": self.base_config.steps,
                "cells": [{"name": cell.name, "flags": list(cell.flags)} for cell in self.cells],
                "seeds": self.seeds, "baseline_cell": self.baseline_cell or None,
                "eval_flags": list(self.eval_flags), "eval_settings": self.eval_settings}

    def evaluation(self, run: Run) -> dict:
        """What a run's metrics depend on besides its training: recorded in run.json, compared on resume."""
        return {"flags": list(self.eval_flags), "settings": self.eval_settings,
                "baseline": run.baseline.name if run.baseline else None,
                "baseline_step": run.baseline.config.steps if run.baseline else None}


def identity_fields(config: config_lib.TrainConfig) -> dict:
    """What the base config fixes for every run: the non-runtime fields (TrainConfig.differences) but the seed.
    Tuples are their flag text ("96,48,24"), as study.json has always held them."""
    return {field.name: _json_value(getattr(config, field.name)) for field in dataclasses.fields(config)
            if not field.metadata["runtime"] and field.name not in STUDY_CONTROLLED}


def _json_value(value):
    return config_lib.format_value(value) if isinstance(value, tuple) else value


def parse_train_flags(text_or_tokens, where: str, forbidden: Mapping[str, str]) -> tuple[tuple[str, ...], dict]:
    """`--name=value` tokens of dcign_tf.train -> (tokens, {field: value}); StudyError for anything else.

    forbidden: field -> why it may not be set here.
    """
    try:
        tokens = tuple(shlex.split(text_or_tokens) if isinstance(text_or_tokens, str) else text_or_tokens)
    except ValueError as error:
        raise StudyError(f"{where}: cannot split the flags ({error})") from None
    fields = {field.name: field for field in dataclasses.fields(config_lib.TrainConfig)}
    overrides = {}
    for token in tokens:
        match = re.fullmatch(r"--(\w+)(?:=(.*))?", token, flags=re.DOTALL)
        if not match:
            raise StudyError(f"{where}: {token!r} is not a --name=value training flag")
        name, raw = match.groups()
        if name not in fields and name.startswith("no") and raw is None and \
                fields.get(name[2:]) is not None and fields[name[2:]].type == "bool":
            name, raw = name[2:], "false"
        if name not in fields:
            raise StudyError(f"{where}: unknown training flag --{name} (python -m dcign_tf.train --helpfull "
                             "lists them)")
        if name in forbidden:
            raise StudyError(f"{where}: --{name} cannot be set here: {forbidden[name]}")
        if raw is None:
            if fields[name].type != "bool":
                raise StudyError(f"{where}: --{name} needs a value (--{name}=VALUE; --{name}= for empty)")
            raw = "true"
        try:
            overrides[name] = config_lib.parse_value(name, raw)
        except config_lib.ConfigError as error:
            raise StudyError(f"{where}: {error}") from None
    return tokens, overrides


def parse_cell(spec: str) -> Cell:
    """`NAME: FLAGS` -> Cell (flags checked against TrainConfig's fields)."""
    name, colon, text = spec.partition(":")
    name = name.strip()
    if not colon or not CELL_NAME.fullmatch(name):
        raise StudyError(f"--cell={spec!r} is not NAME: FLAGS with NAME of letters, digits and _.+- "
                         "(e.g. --cell=dcign+mirror: --mode=dcign --mirror_factors=azimuth,light)")
    why = {name: "the study sets it for every run" for name in STUDY_CONTROLLED}
    dataset_fields = DATASET_FIELDS | {f.name for f in dataclasses.fields(config_lib.TrainConfig)
                                       if f.name.startswith("dataset_")}
    why.update({name: "every cell trains on the base config's dataset (set it in --base_flagfile or "
                      "--train_flags)" for name in dataset_fields})
    tokens, overrides = parse_train_flags(text, f"cell {name!r}", why)
    return Cell(name=name, flags=tokens, overrides=overrides)


def parse_eval_flags(text: str) -> tuple[tuple[str, ...], dict]:
    """--eval_flags -> (tokens, the evaluate.Settings they give, as a dict); StudyError if evaluate would refuse."""
    try:
        tokens = tuple(shlex.split(text))
    except ValueError as error:
        raise StudyError(f"--eval_flags: cannot split the flags ({error})") from None
    for token in tokens:
        match = re.fullmatch(r"--(?:no)?(\w+)(?:=.*)?", token, flags=re.DOTALL)
        if match and match.group(1) in EVAL_CONTROLLED:
            raise StudyError(f"--eval_flags: --{match.group(1)} is set by the study for every run")
    flag_values = flags.FlagValues()
    evaluate_lib.define_flags(flag_values)
    try:
        rest = flag_values([evaluate_lib.PROGRAM, *tokens])
    except flags.Error as error:
        raise StudyError(f"--eval_flags: {' '.join(str(error).split())}") from None
    if len(rest) > 1:
        raise StudyError(f"--eval_flags: unexpected arguments {rest[1:]}; flags take the form --name=value")
    settings = evaluation_lib.Settings(**{field.name: flag_values[field.name].value
                                        for field in dataclasses.fields(evaluation_lib.Settings)})
    return tokens, json.loads(json.dumps(dataclasses.asdict(settings)))


def load_study(flag_values: flags.FlagValues) -> Study:
    """Validates the whole definition (every run's config included) before anything is launched."""
    if not flag_values.base_flagfile:
        raise StudyError("--base_flagfile is required: the training flagfile every run starts from")
    if not flag_values.study_dir:
        raise StudyError("--study_dir is required: where the runs live")
    seeds = []
    for text in flag_values.seeds:
        try:
            seeds.append(int(text))
        except ValueError:
            raise StudyError(f"--seeds: {text!r} is not an integer") from None
    if not seeds:
        raise StudyError("--seeds is empty: give at least one seed, e.g. --seeds=0,1,2")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"--seeds={','.join(map(str, seeds))} repeats a seed")
    if not flag_values.cell:
        raise StudyError("no --cell: give at least one, e.g. --cell=dcign: --mode=dcign")
    cells = [parse_cell(spec) for spec in flag_values.cell]
    names = [cell.name for cell in cells]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise StudyError(f"two cells are named {repeated[0]!r}; give every --cell its own name")
    controlled = {name: "the study sets it for every run" for name in STUDY_CONTROLLED}
    train_tokens, train_overrides = parse_train_flags(flag_values.train_flags, "--train_flags", controlled)
    eval_tokens, eval_settings = parse_eval_flags(flag_values.eval_flags)
    try:
        base = config_lib.from_flagfile(flag_values.base_flagfile)
        base = dataclasses.replace(base, **train_overrides)
    except config_lib.ConfigError as error:
        raise StudyError(f"--base_flagfile={flag_values.base_flagfile}: {error}") from None
    study_dir = flag_values.study_dir
    study = Study(name=flag_values.study_name or os.path.basename(os.path.normpath(study_dir)),
                  study_dir=study_dir, results_dir=flag_values.results_dir,
                  base_flagfile=flag_values.base_flagfile, train_flags=train_tokens, cells=cells, seeds=seeds,
                  baseline_cell=flag_values.baseline_cell, eval_flags=eval_tokens, eval_settings=eval_settings,
                  base_config=base)
    baseline = None
    if study.baseline_cell:
        if study.baseline_cell not in names:
            raise StudyError(f"--baseline_cell={study.baseline_cell} names no cell (cells: {', '.join(names)})")
        baseline = cells[names.index(study.baseline_cell)]
    # Seed-major, each seed's baseline first: the first seed's comparison is complete early on.
    ordered = ([baseline] if baseline else []) + [cell for cell in cells if cell is not baseline]
    for seed in seeds:
        baseline_run = None
        for cell in ordered:
            run_dir = os.path.join(study_dir, cell.name, f"seed{seed}")
            try:
                config = dataclasses.replace(base, **cell.overrides, workdir=os.path.abspath(run_dir), seed=seed)
            except config_lib.ConfigError as error:
                raise StudyError(f"cell {cell.name!r}: {error}") from None
            if cell is baseline and config.mode != "baseline":
                raise StudyError(f"--baseline_cell={cell.name} trains in --mode={config.mode}; name a "
                                 "--mode=baseline cell")
            paired = baseline_run if config.mode == "dcign" and cell is not baseline else None
            run = Run(index=len(study.runs), cell=cell, seed=seed, dir=run_dir, config=config, baseline=paired)
            study.runs.append(run)
            if cell is baseline:
                baseline_run = run
    return study


# ---------------------------------------------------------------------------------------------------
# Study and run directories.


def check_study_home(study: Study, directory: str, create: bool) -> None:
    """Refuses a directory holding another study; records (or updates) this one's study.json there.

    Another study: another name, another base config, or a cell of the same name with other flags.
    Added or removed cells and seeds and other evaluation settings are the same study, extended.
    """
    path = os.path.join(directory, STUDY_FILE)
    definition = study.definition()
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as file:
                recorded = json.load(file)
        except (OSError, json.JSONDecodeError) as error:
            raise StudyError(f"{path} is unreadable ({error}); move {directory} aside") from None
        if recorded == definition:
            return
        conflict = None
        if recorded.get("name") != study.name:
            conflict = f"study {recorded.get('name')!r}, not {study.name!r}"
        else:
            base = recorded.get("base_config") or {}
            changed = [f"{key}={base.get(key)!r}, not {value!r}" for key, value in definition["base_config"].items()
                       if key in base and base[key] != value]
            if changed:
                conflict = f"study {study.name!r} with another base config ({'; '.join(changed[:3])})"
            for cell in recorded.get("cells") or []:
                ours = [c for c in study.cells if c.name == cell.get("name")]
                if ours and list(ours[0].flags) != list(cell.get("flags") or []):
                    conflict = (f"study {study.name!r} whose cell {ours[0].name!r} is "
                                f"{' '.join(cell.get('flags') or []) or '(no flags)'!r}, not {ours[0].flags_text!r}")
                    break
        if conflict:
            raise StudyError(f"{directory} holds {conflict} ({path}); choose another --study_dir / --results_dir "
                             "or another cell name")
    elif os.path.isdir(directory) and os.listdir(directory):
        raise StudyError(f"{directory} is not empty and has no {STUDY_FILE}, so it holds no study; choose another "
                         "--study_dir / --results_dir")
    if create:
        os.makedirs(directory, exist_ok=True)
        io_utils.write_json_atomic(path, definition)


def latest_checkpoint_step(run_dir: str) -> int | None:
    """The step of the run's latest checkpoint, read from checkpoints/checkpoint (no TensorFlow needed)."""
    try:
        with open(os.path.join(run_dir, "checkpoints", "checkpoint"), encoding="utf-8") as file:
            text = file.read()
    except OSError:
        return None
    match = re.search(r'^model_checkpoint_path:\s*"[^"]*-(\d+)"', text, flags=re.MULTILINE)
    return int(match.group(1)) if match else None


def export_step(run_dir: str) -> int | None:
    """The step recorded in export/model_info.json, or None without a readable export."""
    return _read_json(os.path.join(run_dir, "export", export_lib.INFO_FILE), {}).get("step")


def _read_json(path: str, default):
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, json.JSONDecodeError):
        return default


@dataclasses.dataclass
class RunState:
    """finished: summary matches; trained: export at the study's step; partial/empty: to train."""

    kind: str
    step: int  # the step training would resume from (the export's, when trained)


def read_run_summary(directory: str, run: Run, study: Study) -> tuple[dict, dict] | None:
    """(run.json, metrics.json) of a per-run summary that matches the run as the study defines it now;
    None when there is none, or it is stale (other step count or evaluation). StudyError if it holds a
    run with another training config."""
    flags_path = os.path.join(directory, FLAGS_FILE)
    facts = _read_json(os.path.join(directory, RUN_FILE), None)
    metrics = _read_json(os.path.join(directory, report_lib.METRICS_FILE), None)
    if facts is None or metrics is None or not os.path.exists(flags_path):
        return None
    check_same_config(run, flags_path, directory)
    if facts.get("step") != run.config.steps or facts.get("evaluation") != study.evaluation(run):
        return None
    return facts, metrics


def check_same_config(run: Run, flags_path: str, holder: str) -> None:
    try:
        recorded = config_lib.from_flagfile(flags_path)
    except config_lib.ConfigError as error:
        raise StudyError(f"{flags_path} is unreadable ({error}); move {holder} aside") from None
    differences = run.config.differences(recorded)
    if differences:
        raise StudyError(f"{holder} holds a run with another config than the study's {run.name} "
                         f"({'; '.join(differences[:3])}); move it aside, or choose another --study_dir")


def inspect(run: Run, study: Study) -> RunState:
    """What the run directory holds, without TensorFlow; StudyError for one that is not this run."""
    flags_path = os.path.join(run.dir, FLAGS_FILE)
    entries = os.listdir(run.dir) if os.path.isdir(run.dir) else []
    # A lock and a flags.txt temporary are all that a training killed before writing flags.txt leaves.
    if not [name for name in entries
            if name != workdir_lib.LOCK_FILE and not name.startswith(f"{FLAGS_FILE}.tmp-")]:
        return RunState("empty", 0)
    if not os.path.exists(flags_path):
        raise StudyError(f"{run.dir} is not empty and has no {FLAGS_FILE}, so it is not a dcign_tf run; move it "
                         "aside, or choose another --study_dir")
    checkpoint, exported = latest_checkpoint_step(run.dir), export_step(run.dir)
    summary_dir = os.path.join(run.dir, RUN_SUMMARY_DIR)
    if checkpoint is None and exported is None and not os.path.isdir(summary_dir):
        return RunState("empty", 0)  # flags.txt alone: nothing to lose, train rewrites it
    check_same_config(run, flags_path, run.dir)
    if os.path.isdir(summary_dir) and read_run_summary(summary_dir, run, study):
        return RunState("finished", run.config.steps)  # even with its checkpoints and export deleted
    beyond = max(step or 0 for step in (checkpoint, exported))
    if beyond > run.config.steps:
        raise StudyError(f"{run.dir} is at step {beyond}, beyond the study's --steps={run.config.steps}; move it "
                         "aside, or choose another --study_dir")
    if exported == run.config.steps:
        return RunState("trained", exported)
    return RunState("partial" if checkpoint else "empty", checkpoint or 0)


def finished_elsewhere(study: Study, selected: Sequence[Run]) -> dict[int, str]:
    """Runs finished on another machine, {run index: its summary in RESULTS_DIR}: the summary (as
    committed) matches the study and STUDY_DIR has nothing of the run. A baseline that a run still to
    evaluate here needs is left out, to be trained again: the evaluation reads its export. Writes nothing."""
    states = {run.index: inspect(run, study).kind for run in selected}
    if not study.results_dir:
        return {}
    found = {}
    for run in selected:
        source = os.path.join(study.results_dir, run.cell.name, f"seed{run.seed}")
        if states[run.index] == "empty" and os.path.isdir(source) and read_run_summary(source, run, study):
            found[run.index] = source
    for run in selected:
        if run.baseline is not None and run.index not in found and states[run.index] != "finished":
            found.pop(run.baseline.index, None)
    return found


def restore_run_summary(run: Run, source: str) -> None:
    """RUN/summary/ and RUN/flags.txt from a committed summary: the run then counts as finished."""
    target = os.path.join(run.dir, RUN_SUMMARY_DIR)
    temporary = f"{target}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(run.dir, exist_ok=True)
    shutil.copytree(source, temporary)
    export_lib.replace_directory(temporary, target)
    with open(os.path.join(target, FLAGS_FILE), encoding="utf-8") as file:
        io_utils.write_text_atomic(os.path.join(run.dir, FLAGS_FILE), file.read())


def write_run_summary(run: Run, study: Study, seconds: Mapping[str, float | None]) -> str:
    """RUN/summary/: metrics.json, flags.txt and run.json, written as one directory (atomically)."""
    target = os.path.join(run.dir, RUN_SUMMARY_DIR)
    temporary = f"{target}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    shutil.copyfile(os.path.join(run.dir, FLAGS_FILE), os.path.join(temporary, FLAGS_FILE))
    shutil.copyfile(os.path.join(run.dir, report_lib.EVAL_DIR, report_lib.METRICS_FILE),
                    os.path.join(temporary, report_lib.METRICS_FILE))
    io_utils.write_json_atomic(os.path.join(temporary, RUN_FILE), {
        "study": study.name, "cell": run.cell.name, "cell_flags": list(run.cell.flags), "seed": run.seed,
        "step": export_step(run.dir), "evaluation": study.evaluation(run),
        "seconds": {stage: None if value is None else round(value, 1) for stage, value in seconds.items()},
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    export_lib.replace_directory(temporary, target)
    return target


def copy_run_summary(source: str, results_dir: str, run: Run) -> None:
    """RESULTS_DIR/<cell>/seed<k>/: the same three files, replaced as one directory."""
    target = os.path.join(results_dir, run.cell.name, f"seed{run.seed}")
    temporary = f"{target}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copytree(source, temporary)
    export_lib.replace_directory(temporary, target)


def publish_run_summaries(study: Study, runs: Sequence[Run]) -> None:
    """Copies into RESULTS_DIR each finished run's summary that it lacks or holds in another version, so
    that a study stopped between a run's summary and its copy still publishes it when started again."""
    for run in runs:
        source = os.path.join(run.dir, RUN_SUMMARY_DIR)
        if not (os.path.isdir(source) and read_run_summary(source, run, study)):
            continue
        target = os.path.join(study.results_dir, run.cell.name, f"seed{run.seed}")
        names = sorted(os.listdir(source))
        if not (os.path.isdir(target) and sorted(os.listdir(target)) == names
                and filecmp.cmpfiles(source, target, names, shallow=False)[0] == names):
            copy_run_summary(source, study.results_dir, run)


# ---------------------------------------------------------------------------------------------------
# The summary.


def with_absolute_correlations(flat: Mapping[str, float]) -> dict[str, float]:
    """Adds `.../abs_spearman` (and pearson) next to every correlation: its sign only says which way a latent runs."""
    out = dict(flat)
    for key, value in flat.items():
        head, _, last = key.rpartition("/")
        if last in ("spearman", "pearson"):
            out[f"{head}/abs_{last}" if head else f"abs_{last}"] = abs(value)
    return out


def statistics_of(per_seed: Mapping[int, float]) -> dict:
    values = list(per_seed.values())
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "per_seed": {str(seed): value for seed, value in per_seed.items()}}


def summarize(study: Study, source: str, headline: Sequence[str]) -> dict:
    """summary.json's dict from the per-run summaries in `source` (a study dir or a results dir)."""
    in_study_dir = os.path.realpath(source) == os.path.realpath(study.study_dir)
    runs, cells, stale = {}, {}, []
    for cell in study.cells:
        per_key: dict[str, dict[int, float]] = {}
        steps = {}
        for run in [r for r in study.runs if r.cell is cell]:
            directory = (os.path.join(run.dir, RUN_SUMMARY_DIR) if in_study_dir
                         else os.path.join(source, cell.name, f"seed{run.seed}"))
            found = read_run_summary(directory, run, study) if os.path.isdir(directory) else None
            if found is None and os.path.exists(os.path.join(directory, RUN_FILE)):
                stale.append(run.name)
            runs.setdefault(cell.name, {})[str(run.seed)] = "finished" if found else "missing"
            if found is None:
                continue
            facts, metrics = found
            steps[str(run.seed)] = facts["step"]
            for key, value in with_absolute_correlations(report_lib.flatten(metrics)).items():
                if math.isfinite(value):
                    per_key.setdefault(key, {})[run.seed] = value
        cells[cell.name] = {"flags": cell.flags_text, "seeds": [int(seed) for seed in steps], "steps": steps,
                            "metrics": {key: statistics_of(per_key[key]) for key in sorted(per_key)}}
    failures = {}
    if in_study_dir:
        for run in study.runs:
            failure = _read_json(os.path.join(study.study_dir, LOGS_DIR, f"{run.log_stem}.failure.json"), None)
            if failure and runs[run.cell.name][str(run.seed)] == "missing":
                failures[run.name] = failure
    present = [key for key in headline if any(headline_values(cells[c.name], key) for c in study.cells)]
    return {"study": study.name, "definition": study.definition(), "runs": runs, "cells": cells,
            "headline": present, "stale": stale, "failures": failures}


def headline_values(cell_summary: Mapping, key: str) -> dict | None:
    """A headline metric's statistics for a cell: KEY, or KEY/dcign for a run scored against a baseline
    (its novel-view numbers are {"dcign": ..., "baseline": ...})."""
    metrics = cell_summary["metrics"]
    return metrics.get(key) or metrics.get(f"{key}/{report_lib.MAIN_LABEL}")


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _mean_sd(stats: Mapping | None) -> str:
    if not stats:
        return "–"
    sd = f" ± {_number(stats['sd'])}" if stats["sd"] is not None else ""
    return f"{_number(stats['mean'])}{sd} ({stats['n']})"


def headline_table(summary: Mapping) -> str:
    """Markdown: one row per headline metric, one column per cell, `mean ± sd (n)`."""
    names = list(summary["cells"])
    lines = ["| metric | " + " | ".join(f"`{name}`" for name in names) + " |",
             "|---|" + "---|" * len(names)]
    for key in summary["headline"]:
        lines.append(f"| `{key}` | " + " | ".join(_mean_sd(headline_values(summary["cells"][name], key))
                                                   for name in names) + " |")
    return "\n".join(lines)


def summary_markdown(summary: Mapping, figure_name: str | None) -> str:
    definition, cells = summary["definition"], summary["cells"]
    finished = sum(state == "finished" for seeds in summary["runs"].values() for state in seeds.values())
    total = sum(len(seeds) for seeds in summary["runs"].values())
    seeds = ", ".join(map(str, definition["seeds"]))
    lines = [f"# Study `{summary['study']}`", "",
             f"{finished} of {total} runs finished: {len(cells)} cells × seeds {seeds}. Base config "
             f"`{definition['base_flagfile']}`" + (f" with `{' '.join(definition['train_flags'])}`"
                                                   if definition["train_flags"] else "") +
             f"; every run evaluated with `dcign_tf.evaluate {' '.join(definition['eval_flags'])}`".rstrip() + ".",
             ""]
    if definition["baseline_cell"]:
        lines += [f"Cells in `--mode=dcign` are evaluated against `{definition['baseline_cell']}` of the same "
                  "seed: their `novel_view_mse` is the DC-IGN number, with the baseline's on the same pairs under "
                  "`novel_view_mse/<factor>/baseline` in summary.json.", ""]
    lines += ["| cell | flags (after the base config) | seeds finished |", "|---|---|---|"]
    for name, cell in cells.items():
        lines.append(f"| `{name}` | `{cell['flags'] or '(none)'}` | {', '.join(map(str, cell['seeds'])) or '–'} |")
    lines += ["", "## Headline metrics", "",
              "Mean ± sample standard deviation over seeds (number of seeds). `abs_spearman` is |Spearman| of a "
              "factor's latent against the factor's true value, per seed.", "", headline_table(summary), ""]
    if figure_name:
        lines += [f"![each seed a dot, each cell a column]({figure_name})", ""]
    lines += ["## Per seed", "", "| metric | cell | " + " | ".join(f"seed {s}" for s in definition["seeds"]) + " |",
              "|---|---|" + "---|" * len(definition["seeds"])]
    for key in summary["headline"]:
        for name, cell in cells.items():
            stats = headline_values(cell, key)
            per_seed = stats["per_seed"] if stats else {}
            lines.append(f"| `{key}` | `{name}` | " + " | ".join(_number(per_seed.get(str(s)))
                                                                 for s in definition["seeds"]) + " |")
    scored = sorted({key for cell in cells.values() for key in cell["metrics"]
                     if key.split("/", 1)[0] in report_lib.SCORED_SECTIONS})
    lines += ["", "## Every score", "", "| metric | " + " | ".join(f"`{n}`" for n in cells) + " |",
              "|---|" + "---|" * len(cells)]
    for key in scored:
        lines.append(f"| `{key}` | " + " | ".join(_mean_sd(cell["metrics"].get(key)) for cell in cells.values()) + " |")
    missing = [f"{cell}/seed{seed}" for cell, seeds in summary["runs"].items()
               for seed, state in seeds.items() if state != "finished"]
    if missing:
        lines += ["", "## Not finished", ""]
        for name in missing:
            failure = summary["failures"].get(name)
            note = f": {failure['stage']} failed ({failure['message']})" if failure else ""
            lines.append(f"- `{name}`{note}")
    return "\n".join(lines) + "\n"


def summary_figure(summary: Mapping):
    """One panel per headline metric: each cell a column, each seed a dot, the mean a bar. uint8 [H, W, 3]."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no GUI backend, no global state
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    keys, names = summary["headline"], list(summary["cells"])
    seeds = summary["definition"]["seeds"]
    columns = min(4, max(1, len(keys)))
    rows = -(-max(1, len(keys)) // columns)
    figure = Figure(figsize=(3.2 * columns, 2.9 * rows), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    colours = [f"C{i % 10}" for i in range(len(seeds))]
    for panel, key in zip(axes, keys):
        for column, name in enumerate(names):
            stats = headline_values(summary["cells"][name], key)
            if not stats:
                continue
            for position, seed in enumerate(seeds):
                value = stats["per_seed"].get(str(seed))
                if value is not None:  # seeds side by side within the column, so that equal values stay visible
                    panel.plot(column + (position - (len(seeds) - 1) / 2) * 0.08, value, "o",
                               color=colours[position], markersize=5)
            panel.hlines(stats["mean"], column - 0.25, column + 0.25, color="black", linewidth=1.5)
        panel.set_title(key, fontsize=8)
        panel.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        panel.set_xlim(-0.6, len(names) - 0.4)
        panel.tick_params(axis="y", labelsize=7)
        panel.grid(axis="y", alpha=0.3)
    for panel in axes[len(keys):]:
        panel.set_visible(False)
    axes[0].legend(handles=[Line2D([], [], marker="o", linestyle="", color=colour, label=f"seed {seed}")
                            for seed, colour in zip(seeds, colours)]
                   + [Line2D([], [], color="black", label="mean")], fontsize=6, loc="best")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_summary(study: Study, directory: str, headline: Sequence[str]) -> dict:
    """summary.json, summary.md and summary.png in `directory`, from its per-run summaries; files whose
    content would not change are left alone (a rerun with nothing to do rewrites nothing)."""
    from dcign_tf import figures

    summary = summarize(study, directory, headline)
    json_path = os.path.join(directory, SUMMARY_JSON)
    if _read_json(json_path, None) == json.loads(json.dumps(summary)) and \
            os.path.exists(os.path.join(directory, SUMMARY_MD)):
        return summary
    io_utils.write_json_atomic(json_path, summary)
    has_figure = bool(summary["headline"])
    if has_figure:
        figures.save_png(os.path.join(directory, SUMMARY_FIGURE), summary_figure(summary))
    io_utils.write_text_atomic(os.path.join(directory, SUMMARY_MD),
                               summary_markdown(summary, SUMMARY_FIGURE if has_figure else None))
    return summary


# ---------------------------------------------------------------------------------------------------
# Running.


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _last_line(path: str) -> str:
    """The last non-empty line of a log, for a failure's one-line report."""
    try:
        with open(path, "rb") as file:
            file.seek(max(0, os.path.getsize(path) - 8192))
            lines = [line.strip() for line in file.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:240] if lines else ""


@dataclasses.dataclass
class Task:
    run: Run
    stage: str  # "train" or "evaluate"
    process: subprocess.Popen
    log_path: str
    started: float


@dataclasses.dataclass
class Progress:
    """A run's journey in this invocation."""

    state: RunState
    train: bool  # still to train here
    evaluate: bool  # still to evaluate here
    started: float | None = None
    seconds: dict = dataclasses.field(default_factory=lambda: {"train": None, "evaluate": None})
    failure: str | None = None
    done: bool = False


class Runner:
    """Launches the study's trainings and evaluations as subprocesses, --parallel at a time, from one thread.

    A run trains, then evaluates once it and its baseline are trained. Ready evaluations go first (they
    finish runs), then trainings in the study's run order.
    """

    def __init__(self, study: Study, selected: list[Run], parallel: int, train: bool, evaluate: bool,
                 wait_s: float, headline: Sequence[str]):
        self.study, self.selected, self.parallel, self.headline = study, selected, parallel, headline
        self.wait_until = time.time() + wait_s
        self.progress: dict[int, Progress] = {}
        for run in selected:
            state = inspect(run, study)
            self.progress[run.index] = Progress(
                state=state, train=train and state.kind in ("empty", "partial"),
                evaluate=evaluate and state.kind != "finished",
                done=state.kind == "finished" or (state.kind == "trained" and not evaluate))
        self.running: list[Task] = []
        self.stopping: str | None = None
        self.dataset_builder: Task | None = None  # the one trainer allowed while the dataset is being built
        self.logs_dir = os.path.join(study.study_dir, LOGS_DIR)

    # -- launching
    def command(self, run: Run, stage: str) -> list[str]:
        if stage == "train":
            arguments = ["-m", "dcign_tf.train", f"--flagfile={self.study.base_flagfile}", *self.study.train_flags,
                         *run.cell.flags, f"--workdir={os.path.abspath(run.dir)}", f"--seed={run.seed}",
                         "--progress=log"]
        else:
            arguments = ["-m", "dcign_tf.evaluate", f"--workdir={os.path.abspath(run.dir)}", *self.study.eval_flags]
            if run.baseline:
                arguments.append(f"--baseline_workdir={os.path.abspath(run.baseline.dir)}")
        if sys.platform.startswith("linux"):
            return [sys.executable, "-c", LAUNCHER, str(os.getpid()), *arguments]
        return [sys.executable, *arguments]

    def launch(self, run: Run, stage: str) -> None:
        os.makedirs(self.logs_dir, exist_ok=True)
        log_path = os.path.join(self.logs_dir, f"{run.log_stem}.{stage}.log")
        progress = self.progress[run.index]
        if stage == "evaluate":
            progress.state = RunState("trained", export_step(run.dir))
        if progress.started is None:
            progress.started = time.time()
            what = (f"train from step {progress.state.step} of {run.config.steps}"
                    + (" (resuming its checkpoint)" if progress.state.kind == "partial" else "")
                    if stage == "train" else f"evaluate (trained to step {progress.state.step})")
            say(f"start     {run.name:<24} {what}")
        environment = dict(os.environ)
        if self.parallel > 1:
            environment.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")  # runs sharing a GPU
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {stage} {run.name}\n")
            log.flush()
            # A session of its own: a Ctrl-C on the terminal reaches the study alone, which passes on one
            # SIGTERM (a trainer takes a second signal as "stop at once, without a checkpoint").
            process = subprocess.Popen(self.command(run, stage), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=environment, start_new_session=True)
        task = Task(run=run, stage=stage, process=process, log_path=log_path, started=time.time())
        self.running.append(task)
        if stage == "train" and not self.dataset_ready():
            self.dataset_builder = task

    def dataset_ready(self) -> bool:
        """False while the shared faces set is missing or a trainer is still building it: then at most one
        trainer runs, so that parallel runs do not all render the same dataset."""
        builder = self.dataset_builder
        if builder is not None:
            flags_path = os.path.join(builder.run.dir, FLAGS_FILE)
            # train writes flags.txt once its dataset is complete.
            built = os.path.exists(flags_path) and os.path.getmtime(flags_path) >= builder.started - 1
            if not built and builder.process.poll() is None:
                return False
            self.dataset_builder = None
        base = self.study.base_config
        return base.dataset != "faces" or os.path.exists(records.dataset_json_path(base.data_dir))

    def trained(self, run: Run | None) -> bool:
        return run is None or export_step(run.dir) == run.config.steps

    def next_task(self) -> tuple[Run, str] | None:
        busy = {task.run.index for task in self.running}
        training = {task.run.index for task in self.running if task.stage == "train"}
        for run in self.selected:
            progress = self.progress[run.index]
            if run.index in busy or progress.done or progress.failure or progress.train or not progress.evaluate:
                continue
            if self.trained(run) and self.trained(run.baseline) and (
                    run.baseline is None or run.baseline.index not in training):
                return run, "evaluate"
        if not self.dataset_ready() and training:
            return None
        for run in self.selected:
            progress = self.progress[run.index]
            if run.index not in busy and progress.train and not progress.failure:
                return run, "train"
        return None

    def blocked(self) -> list[Run]:
        """Runs that wait for a training this invocation does not do (their own or their baseline's)."""
        out = []
        for run in self.selected:
            progress = self.progress[run.index]
            if progress.done or progress.failure:
                continue
            baseline = self.progress.get(run.baseline.index) if run.baseline else None
            baseline_pending = run.baseline is not None and not self.trained(run.baseline) and (
                baseline is None or not baseline.train or baseline.failure)
            if (not progress.train and progress.evaluate and not self.trained(run)) or baseline_pending:
                out.append(run)
        return out

    # -- finishing
    def finish(self, task: Task) -> None:
        run, progress = task.run, self.progress[task.run.index]
        code = task.process.returncode
        elapsed = time.time() - task.started
        progress.seconds[task.stage] = elapsed
        if code != 0 and self.stopping:
            say(f"stopped   {run.name:<24} {task.stage} after {format_seconds(elapsed)}; the same command resumes")
            progress.failure = "stopped"
            return
        problem = None
        metrics_path = os.path.join(run.dir, report_lib.EVAL_DIR, report_lib.METRICS_FILE)
        if code != 0:
            problem = f"{task.stage} exited {code}: {_last_line(task.log_path)}"
        elif task.stage == "evaluate" and not (os.path.exists(metrics_path)
                                               and os.path.getmtime(metrics_path) >= task.started - 1):
            problem = f"evaluate exited 0 but wrote no {metrics_path}"
        elif task.stage == "train":
            step = export_step(run.dir)
            if step != run.config.steps:
                problem = f"train exited 0 but the export is at step {step}, not {run.config.steps}"
            else:
                progress.train, progress.state = False, RunState("trained", step)
                if not progress.evaluate:
                    progress.done = True
                    say(f"trained   {run.name:<24} train {format_seconds(elapsed)} (step {step})")
                return
        if problem:
            self.fail(run, task.stage, problem, task.log_path)
            return
        summary_dir = write_run_summary(run, self.study, progress.seconds)
        if self.study.results_dir:
            copy_run_summary(summary_dir, self.study.results_dir, run)
        failure_path = os.path.join(self.logs_dir, f"{run.log_stem}.failure.json")
        if os.path.exists(failure_path):
            os.remove(failure_path)
        progress.done, progress.evaluate = True, False
        finished = sum(p.done and not p.failure for p in self.progress.values())
        say(f"finished  {run.name:<24} train {format_seconds(progress.seconds['train'])}, evaluate "
            f"{format_seconds(progress.seconds['evaluate'])} ({finished} of {len(self.selected)} finished)")
        self.write_summaries()

    def fail(self, run: Run, stage: str, message: str, log_path: str | None) -> None:
        progress = self.progress[run.index]
        progress.failure = message
        os.makedirs(self.logs_dir, exist_ok=True)
        io_utils.write_json_atomic(os.path.join(self.logs_dir, f"{run.log_stem}.failure.json"), {
            "stage": stage, "message": message, "log": log_path,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        say(f"FAILED    {run.name:<24} {message}" + (f" (log: {log_path})" if log_path else ""))

    def write_summaries(self) -> dict:
        """The summary files in the study dir (and the results dir); returns the study dir's summary."""
        if self.study.results_dir:
            write_summary(self.study, self.study.results_dir, self.headline)
        return write_summary(self.study, self.study.study_dir, self.headline)

    # -- the loop
    def on_sigterm(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.stopping = "SIGTERM"
        self.forward_sigterm()

    def forward_sigterm(self) -> None:
        """Trainers save a checkpoint and exit 143; a second one makes them stop at once."""
        for task in self.running:
            if task.process.poll() is None:
                task.process.send_signal(signal.SIGTERM)

    def run(self) -> int:
        previous = signal.signal(signal.SIGTERM, self.on_sigterm)
        try:
            return self._loop()
        except KeyboardInterrupt:
            self.stopping = "SIGINT"
            self.forward_sigterm()
            while self.running:
                try:
                    self.running[0].process.wait()
                    self.finish(self.running.pop(0))
                except KeyboardInterrupt:  # a second Ctrl-C: stop at once
                    self.forward_sigterm()
            return EXIT_INTERRUPTED
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _loop(self) -> int:
        while True:
            while not self.stopping and len(self.running) < self.parallel:
                chosen = self.next_task()
                if chosen is None:
                    break
                self.launch(*chosen)
            if not self.running:
                if self.stopping:
                    return EXIT_TERMINATED
                waiting = self.blocked()
                if waiting and time.time() < self.wait_until:
                    time.sleep(min(WAIT_POLL_S, max(0.0, self.wait_until - time.time())))
                    continue
                for run in waiting:
                    reason = (f"{run.baseline.name} is not trained" if run.baseline and not self.trained(run.baseline)
                              else "it is not trained")
                    self.progress[run.index].failure = f"not evaluated: {reason}"
                    say(f"waiting   {run.name:<24} not evaluated: {reason} (a run with --train, or the final "
                        "step on a cluster, does it)")
                return 0
            time.sleep(POLL_S)
            for task in [task for task in self.running if task.process.poll() is not None]:
                self.running.remove(task)
                self.finish(task)


def selected_runs(study: Study, only_index: int | None) -> list[Run]:
    if only_index is None:
        return list(study.runs)
    if not 0 <= only_index < len(study.runs):
        raise StudyError(f"--only_index={only_index} is out of range: the study has {len(study.runs)} runs "
                         f"(0..{len(study.runs) - 1}; --list_runs lists them)")
    return [study.runs[only_index]]


def list_runs(study: Study) -> None:
    for run in study.runs:
        state = inspect(run, study)
        paired = f"  (scored against {run.baseline.name})" if run.baseline else ""
        print(f"{run.index:>3}  {run.name:<28} {state.kind:<9} step {state.step:>6} of {run.config.steps}{paired}")


def run_study(flag_values: flags.FlagValues) -> int:
    study = load_study(flag_values)
    headline = list(flag_values.headline_metrics)
    if flag_values.list_runs:
        list_runs(study)
        return 0
    if flag_values.summarize_only:
        return summarize_only(study, headline)
    selected = selected_runs(study, flag_values.only_index)
    check_study_home(study, study.study_dir, create=False)
    if study.results_dir:
        check_study_home(study, study.results_dir, create=False)
    elsewhere = finished_elsewhere(study, selected)  # inspects every run: refuses a foreign one before any write
    check_study_home(study, study.study_dir, create=True)
    if study.results_dir:
        check_study_home(study, study.results_dir, create=True)
    restored = [run for run in selected if run.index in elsewhere]
    for run in restored:
        restore_run_summary(run, elsewhere[run.index])
    if study.results_dir:
        publish_run_summaries(study, selected)
    runner = Runner(study, selected, flag_values.parallel, flag_values.train, flag_values.evaluate,
                    flag_values.wait_s, headline)
    finished_before = [run.name for run in selected if runner.progress[run.index].state.kind == "finished"]
    print(f"study {study.name}: {len(study.runs)} runs ({len(study.cells)} cells x {len(study.seeds)} seeds) in "
          f"{study.study_dir}; {len(selected) - len(finished_before)} to do"
          + (f", run {selected[0].index} only" if flag_values.only_index is not None else "")
          + f", parallel {flag_values.parallel}", flush=True)
    if restored:
        say(f"finished on another machine (summary from {study.results_dir}): "
            f"{', '.join(run.name for run in restored)}")
    if finished_before:
        say(f"finished earlier: {', '.join(finished_before)}")
    status = runner.run()
    if status in (EXIT_TERMINATED, EXIT_INTERRUPTED):
        say("stopped; the same command resumes")
        return status
    if flag_values.evaluate:
        summary = runner.write_summaries()
        print(headline_table(summary), flush=True)
        print(f"wrote {os.path.join(study.study_dir, SUMMARY_JSON)}, {SUMMARY_MD} and {SUMMARY_FIGURE}"
              + (f"; per-run summaries and the same files in {study.results_dir}" if study.results_dir else ""),
              flush=True)
    problems = [(run, runner.progress[run.index].failure) for run in selected
                if runner.progress[run.index].failure or not runner.progress[run.index].done]
    if problems:
        print(f"{len(problems)} of {len(selected)} runs not finished: "
              + "; ".join(f"{run.name} ({problem or 'not done'})" for run, problem in problems)
              + ". Run the same command again to retry.", flush=True)
        return EXIT_FAILED
    return 0


def summarize_only(study: Study, headline: Sequence[str]) -> int:
    """Rebuilds the summary from per-run summaries: those of RESULTS_DIR (after copying in the study dir's
    finished runs, when it is here), else those of STUDY_DIR. Trains and evaluates nothing."""
    has_study_dir = os.path.exists(os.path.join(study.study_dir, STUDY_FILE))
    if has_study_dir:
        check_study_home(study, study.study_dir, create=False)
    if study.results_dir:
        check_study_home(study, study.results_dir, create=True)
        if has_study_dir:
            publish_run_summaries(study, study.runs)
        target = study.results_dir
    elif has_study_dir:
        target = study.study_dir
    else:
        raise StudyError(f"{study.study_dir} holds no study ({STUDY_FILE} is missing) and no --results_dir was "
                         "given: nothing to summarize")
    summary = write_summary(study, target, headline)
    print(headline_table(summary))
    missing = [f"{cell}/seed{seed}" for cell, seeds in summary["runs"].items()
               for seed, state in seeds.items() if state != "finished"]
    print(f"wrote {os.path.join(target, SUMMARY_JSON)}, {SUMMARY_MD} and {SUMMARY_FIGURE}"
          + (f"; not finished: {', '.join(missing)}" if missing else ""))
    return EXIT_FAILED if missing else 0


# ---------------------------------------------------------------------------------------------------
# Command line.


def define_flags(flag_values: flags.FlagValues) -> None:
    def define(kind, name, default, help_text, **kwargs):
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=flag_values, **kwargs)

    define("string", "base_flagfile", None, "The dcign_tf.train flagfile every run starts from.")
    define("string", "train_flags", "", "dcign_tf.train flags added to every run after --base_flagfile, e.g. "
           "--data_dir=/data/faces_small (not --workdir, --seed: the study sets them).")
    define("multi_string", "cell", [], "A cell, NAME: FLAGS (dcign_tf.train flags, after the base config and "
           "--train_flags), e.g. --cell='dcign+mirror: --mode=dcign --mirror_factors=azimuth,light'. Repeat it.")
    define("string", "baseline_cell", "", "The --mode=baseline cell that every dcign-mode cell is evaluated "
           "against, seed by seed (novel-view MSE on the same pairs); empty: no pairing.")
    define("list", "seeds", [], "Seeds, e.g. 0,1,2: every cell is trained once per seed (--seed).")
    define("string", "eval_flags", "", "dcign_tf.evaluate flags used for every run, e.g. --groups_per_factor=0.")
    define("string", "study_dir", None, "Where the runs live: STUDY_DIR/<cell>/seed<k>, study.json, summary.*")
    define("string", "study_name", "", "The study's name (default: the basename of --study_dir).")
    define("string", "results_dir", "", "Also copy each finished run's small summary (metrics.json, flags.txt, "
           "run.json) to RESULTS_DIR/<cell>/seed<k>/ and write the summary files there: the part to commit.")
    define("integer", "parallel", 1, "Runs (trainings or evaluations) at once on this machine.", lower_bound=1)
    define("integer", "only_index", None, "Run only the run with this index (--list_runs), e.g. a Kubernetes "
           "Indexed Job's $JOB_COMPLETION_INDEX.", lower_bound=0)
    define("bool", "train", True, "Train the runs that are not trained (--notrain: only evaluate runs trained "
           "elsewhere).")
    define("bool", "evaluate", True, "Evaluate trained runs and write the summary (--noevaluate: train only).")
    define("float", "wait_s", 0.0, "With runs trained elsewhere (--notrain, --only_index): wait up to this many "
           "seconds for them to be trained before giving up on them.", lower_bound=0)
    define("bool", "summarize_only", False, "Only rebuild summary.json/.md/.png from the per-run summaries "
           "(in --results_dir when given, after copying the study dir's finished runs there).")
    define("bool", "list_runs", False, "Print every run's index, name and state, then exit.")
    define("list", "headline_metrics", DEFAULT_HEADLINE, "metrics.json keys (flattened) shown in summary.md's "
           "headline table and the figure; KEY/dcign is used for a cell scored against a baseline.")


def user_error_types() -> tuple[type, ...]:
    return (StudyError, config_lib.ConfigError, selection_lib.EvaluationError)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI on argv (argv[0] is the program name); returns the exit status."""
    return cli.run(argv, PROGRAM, __doc__, define_flags, run_study, user_error_types)


if __name__ == "__main__":
    sys.exit(main())
