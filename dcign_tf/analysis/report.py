"""What an evaluation writes: RUN/eval/metrics.json, the figures (PNG) and the TensorBoard events, and
the table it prints. The figures are drawn by `dcign_tf.figures`; the numbers come from
`dcign_tf.analysis.scores`.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import time
from typing import Mapping

import numpy as np

from dcign_tf import figures
from dcign_tf import io_utils
from dcign_tf.analysis.scores import Analysis
from dcign_tf.analysis.selection import TestSample


EVAL_DIR = "eval"  # RUN/eval: everything an evaluation writes but the calibration
METRICS_FILE = "metrics.json"
# Labels of the two runs in side-by-side results.
MAIN_LABEL, BASELINE_LABEL = "dcign", "baseline"


def sweep_figure(sample: TestSample, rows: np.ndarray, values: np.ndarray, renders: np.ndarray) -> np.ndarray:
    """Inputs (first column) and their sweeps; column labels are the latent values. uint8 [H, W]."""
    cells = np.concatenate([sample.images[rows][:, None], renders], axis=1)
    return figures.labelled_grid(cells, ["input"] + [f"{value:.3g}" for value in values])


def scatter_figure(factor: str, sample: TestSample, analyses: Mapping[str, Analysis]) -> np.ndarray:
    """Fig 6: one panel per run, the chosen latent against the true value, with the calibration line."""
    panels = []
    unit = sample.units.get(factor, "dataset units")
    for label, analysis in analyses.items():
        latent = analysis.chosen[factor]
        scores = analysis.metrics["equivariance"][factor]
        line = analysis.calibration.get(factor)
        panels.append(figures.ScatterPanel(
            sample.values(factor), analysis.codes[:, latent],
            f"{label} {factor}: pearson {scores['pearson']:.2f}, spearman {scores['spearman']:.2f}",
            f"true {factor} ({unit})", f"latent z{latent} (posterior mean)",
            line=(line["slope"], line["intercept"]) if line else None))
    return figures.scatter_plots(panels)


def novel_view_figure(sample: TestSample, pairs: np.ndarray, analyses: Mapping[str, Analysis], factor: str,
                      rows: int) -> np.ndarray:
    """Fig 5b: per pair (one per group, the first `rows` groups) input, target and each run's render."""
    pairs_per_group = max(1, len(pairs) // len(sample.groups[factor]))
    shown = np.arange(0, len(pairs), pairs_per_group)[:rows]
    columns = [sample.images[pairs[shown, 0]], sample.images[pairs[shown, 1]]]
    columns += [analysis.novel_views[factor][shown] for analysis in analyses.values()]
    labels = ["input", "target"] + [("DC-IGN" if label == MAIN_LABEL else label) for label in analyses]
    return figures.labelled_grid(np.stack(columns, axis=1), labels)


def evaluation_figures(sample: TestSample, figure_rows: np.ndarray, pairs: Mapping[str, np.ndarray],
                       analyses: Mapping[str, Analysis], rows_per_figure: int) -> dict[str, np.ndarray]:
    """Every figure of an evaluation, name (the PNG's, without .png) -> uint8 image: sweep_<F> (a baseline's as
    baseline_sweep_<F>) of the `figure_rows` images, scatter_<F> and novel_view_<F> (`rows_per_figure` pairs)."""
    images = {}
    for label, analysis in analyses.items():
        prefix = "" if label == MAIN_LABEL else f"{label}_"
        for factor, (values, renders) in analysis.sweeps.items():
            images[f"{prefix}sweep_{factor}"] = sweep_figure(sample, figure_rows, values, renders)
    for factor in sample.scene_factors:
        if all(factor in analysis.chosen for analysis in analyses.values()):
            images[f"scatter_{factor}"] = scatter_figure(factor, sample, analyses)
    for factor, factor_pairs in pairs.items():
        images[f"novel_view_{factor}"] = novel_view_figure(sample, factor_pairs, analyses, factor, rows_per_figure)
    return images


def write_figures(eval_dir: str, step: int, metrics: Mapping, images: Mapping[str, np.ndarray]) -> None:
    """The figures as eval_dir/<name>.png, and they and metrics' scores (a baseline's under baseline/) as
    TensorBoard events at `step` (`write_tensorboard`)."""
    os.makedirs(eval_dir, exist_ok=True)
    for name, image in images.items():
        figures.save_png(os.path.join(eval_dir, f"{name}.png"), image)
    scalars = scored(metrics)
    if "baseline" in metrics:
        scalars.update({f"baseline/{name}": value for name, value in scored(metrics["baseline"]).items()})
    write_tensorboard(eval_dir, step, scalars, {f"figures/{name}": image for name, image in images.items()})


def write_metrics(eval_dir: str, metrics: Mapping) -> str:
    """Writes eval_dir/metrics.json atomically (non-finite numbers as null); returns its path."""
    path = os.path.join(eval_dir, METRICS_FILE)
    io_utils.write_json_atomic(path, finite_or_none(metrics))
    return path


def log_report(log, metrics: Mapping, analyses: Mapping[str, Analysis], export_dir: str, metrics_path: str,
               num_figures: int) -> None:
    """Prints the table (one column per run), the data's reference points, the latents used, the calibration
    written into `export_dir` (if it was) and what was written where."""
    log(format_table({label: scored(analysis.metrics) for label, analysis in analyses.items()}))
    log(f"the data: stranger_mse {metrics['stranger_mse']:.4g} (another identity at the same view, "
        f"{metrics['stranger_pairs']} pairs), mean_face_mse {metrics['mean_face_mse']:.4g} (identity "
        f"retention {metrics['mean_face_retention']:.3f} with no identity at all)")
    log("latents used: " + ", ".join(
        f"{label}: " + " ".join(f"{factor}=z{latent}" for factor, latent in analysis.chosen.items())
        for label, analysis in analyses.items()))
    if metrics["calibration_saved"]:
        log(f"calibration written to {os.path.join(export_dir, 'model_info.json')}: " + "; ".join(
            f"{factor} z{line['latent']} = {line['slope']:.3g} * value + {line['intercept']:.3g} "
            f"(r2 {line['r2']:.2f})" for factor, line in analyses[MAIN_LABEL].calibration.items()))
    seconds = metrics["seconds"]
    log(f"wrote {metrics_path}, {num_figures} figures and TensorBoard events (step {metrics['step']}) in "
        f"{seconds['total']:.1f} s on {metrics['test_images']} test images ({seconds['disentanglement']:.1f} s "
        "of it the disentanglement scores)")


def finite_or_none(value):
    """JSON has no NaN: non-finite numbers are written as null."""
    if isinstance(value, Mapping):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def flatten(metrics: Mapping, prefix: str = "") -> dict[str, float]:
    """Nested numeric metrics -> {"a/b/c": float}; non-numeric entries are left out."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


# Scalars shown in the table and TensorBoard, in this order (calibration and latents are facts, not scores).
SCORED_SECTIONS = ("test_mse", "identity_retention", "stranger_mse", "mean_face_mse", "equivariance", "invariance",
                   "novel_view_mse", "disentanglement", "kl")


def scored(metrics: Mapping) -> dict[str, float]:
    return flatten({key: metrics[key] for key in SCORED_SECTIONS if key in metrics})


EVENTS_PATTERN = "tfevents"  # TensorBoard reads every file whose name contains it


STAGING_PREFIX = ".events.tmp-"  # eval/.events.tmp-PID: where a new event file is written before it replaces the old


STALE_STAGING_SECONDS = 3600


def write_tensorboard(logdir: str, step: int, scalars: Mapping[str, float], images: Mapping[str, np.ndarray]) -> None:
    """Scalars and uint8 figures ([H, W] or [H, W, 3]) as TF2 summaries at `step`, replacing earlier evaluations'.

    logdir ends up with exactly one event file: the events of earlier evaluations at *other* steps
    (e.g. of the export before training was extended), then this evaluation's, in step order. A rerun
    at the same step therefore replaces its points instead of adding a second set, which TensorBoard
    would draw as duplicates. The file is built in logdir/.events.tmp-PID and renamed into place
    before the old files are removed, so a kill at any moment leaves the old events or the new ones
    (or both, which the next evaluation merges); staging directories older than an hour are removed.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    os.makedirs(logdir, exist_ok=True)
    remove_stale_staging(logdir)
    staging = os.path.join(logdir, f"{STAGING_PREFIX}{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    writer = tf.summary.create_file_writer(staging)
    with writer.as_default():
        for tag, value in scalars.items():
            if math.isfinite(value):
                tf.summary.scalar(tag, value, step=step)
        for tag, image in images.items():
            image = np.asarray(image)
            if image.ndim == 2:
                image = image[..., None]
            tf.summary.image(tag, image[None], step=step, max_outputs=1)
    writer.flush()
    writer.close()

    old_files = sorted(os.path.join(logdir, name) for name in os.listdir(logdir) if EVENTS_PATTERN in name)
    new_files = [os.path.join(staging, name) for name in os.listdir(staging) if EVENTS_PATTERN in name]
    kept = {}  # (step, tags) -> serialized event; later files win, so a repeated (step, tags) appears once
    for path in old_files + new_files:
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            event = event_pb2.Event.FromString(record)
            tags = tuple(value.tag for value in event.summary.value)
            if not tags or (path in old_files and event.step == step):
                continue  # file_version headers are rewritten once; this step's old points are replaced
            kept[(event.step, tags)] = (event.wall_time, record)
    merged = os.path.join(staging, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
                                   ".evaluate.v2")
    with tf.io.TFRecordWriter(merged) as out:
        out.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        for _, (_, record) in sorted(kept.items(), key=lambda item: (item[0][0], item[1][0])):
            out.write(record)
    target = os.path.join(logdir, os.path.basename(merged))
    io_utils.fsync_file(merged)  # durable before it replaces the old files, as io_utils' writers are
    os.replace(merged, target)
    io_utils.fsync_directory(logdir)
    for path in old_files:
        if path != target:
            os.remove(path)
    shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(logdir: str) -> None:
    """Removes logdir/.events.tmp-* directories left by killed evaluations: those older than STALE_STAGING_SECONDS
    (an evaluation writes its events in seconds; a fresh one may belong to an evaluation running right now)."""
    for name in os.listdir(logdir):
        path = os.path.join(logdir, name)
        try:
            if name.startswith(STAGING_PREFIX) and time.time() - os.path.getmtime(path) > STALE_STAGING_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except FileNotFoundError:  # Removed by its own evaluation meanwhile.
            continue


def format_table(columns: Mapping[str, Mapping[str, float]]) -> str:
    """Rows: the metrics of the first column (plus any only the others have); one column per run."""
    names = list(next(iter(columns.values())))
    for values in list(columns.values())[1:]:
        names += [name for name in values if name not in names]
    width = max(len(name) for name in names) + 2
    lines = ["metric".ljust(width) + "".join(label.rjust(12) for label in columns)]
    for name in names:
        cells = []
        for values in columns.values():
            value = values.get(name)
            cells.append(("-" if value is None or not math.isfinite(value) else f"{value:.4g}").rjust(12))
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)
