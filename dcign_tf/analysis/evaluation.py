"""The whole evaluation of a run (and a baseline beside it): `evaluate(workdir, ...)`, the library function
behind `python -m dcign_tf.evaluate` (whose help says what is measured and written).

It chooses the data (`selection`), scores every run on the same images and pairs (`scores`) and writes
the report (`report`).
"""

from __future__ import annotations

import dataclasses
import os
import time

from dcign_tf import calibration as calibration_lib
from dcign_tf.analysis import report, scores, selection
from dcign_tf.analysis.report import BASELINE_LABEL, MAIN_LABEL
from dcign_tf.analysis.selection import EvaluationError


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of an evaluation. The reference DCI dominates the time: 35 CPU-seconds per scene factor with
    the defaults (1,280 images of data/faces_small), 120 on its whole test split (--groups_per_factor=0,
    4,000 images: 6 CPU-minutes per run), spread over the cores (--disentanglement_jobs)."""

    groups_per_factor: int = 16  # test groups read per factor (0: all)
    pairs_per_group: int = 2  # (i, j) novel-view pairs per group
    sweep_images: int = 8  # test images in each sweep figure
    sweep_steps: int = 9  # latent values per sweep
    mse_images: int = 512  # test images reconstructed for test_mse (0: all evaluated)
    figure_rows: int = 6  # pairs shown in each novel-view figure
    fast_disentanglement: bool = False  # DCI's fast approximation (dci_fast_*) instead of the reference (dci_*)
    disentanglement_jobs: int = 0  # boosted-tree fits run at once (0: one per available core)
    seed: int = 0  # pairs, MSE subset, SAP / DCI splits
    calibrate: bool = True  # write the calibration into RUN/export/model_info.json

    def __post_init__(self):
        for name in ("pairs_per_group", "sweep_images", "sweep_steps", "figure_rows"):
            if getattr(self, name) < 1:
                raise EvaluationError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("groups_per_factor", "mse_images", "disentanglement_jobs"):
            if getattr(self, name) < 0:
                raise EvaluationError(f"--{name} must be 0 (all) or positive, got {getattr(self, name)}")
        if self.sweep_steps < 2:
            raise EvaluationError(f"--sweep_steps must be at least 2, got {self.sweep_steps}")


def evaluate(workdir: str, baseline_workdir: str | None = None, data_dir: str | None = None,
             settings: Settings = Settings(), log=print) -> dict:
    """Evaluates RUN (and a baseline on the same images and pairs); writes RUN/eval; returns metrics.json's dict."""
    started = time.perf_counter()
    run, baseline, data_dir, dataset = selection.resolve_runs(workdir, baseline_workdir, data_dir)
    if baseline and run.mode != "dcign":
        log(f"note: comparing a {run.mode} run (column {MAIN_LABEL!r}) with a {baseline.mode} run "
            f"(column {BASELINE_LABEL!r})")

    from dcign_tf import export as export_lib  # TensorFlow loads here, after the input checks.

    sample = selection.load_test_sample(data_dir, dataset, settings.groups_per_factor)
    runs = {MAIN_LABEL: run, **({BASELINE_LABEL: baseline} if baseline else {})}
    models = {label: export_lib.load_model(spec.export_dir)[0] for label, spec in runs.items()}
    for label, model in models.items():
        selection.check_model(model, sample, runs[label].export_dir)
    loaded = time.perf_counter()

    # The same pairs, MSE images and figure images for every run.
    pairs = selection.novel_view_pairs_by_factor(sample, settings.pairs_per_group, settings.seed)
    mse_rows = selection.mse_rows(sample.num_images, settings.mse_images, settings.seed)
    figure_rows = selection.sweep_rows(sample, settings.sweep_images)
    references = scores.stranger_references(sample.images, selection.same_view_groups(sample))
    analyses, analyse_seconds = {}, {}
    for label, model in models.items():
        clock = time.perf_counter()
        analyses[label] = scores.analyse(model, sample, pairs, mse_rows, figure_rows, settings.sweep_steps,
                                         references["stranger_mse"])
        analyse_seconds[label] = round(time.perf_counter() - clock, 2)
    clock = time.perf_counter()
    run_scores, disentanglement_settings = scores.disentanglement_for_runs(
        {label: analysis.codes for label, analysis in analyses.items()}, sample,
        fast=settings.fast_disentanglement, seed=settings.seed, jobs=settings.disentanglement_jobs)
    for label, analysis in analyses.items():
        analysis.metrics["disentanglement"] = run_scores[label]
    disentanglement_seconds = round(time.perf_counter() - clock, 2)
    primary = analyses[MAIN_LABEL]

    metrics = dict(primary.metrics)
    if baseline:
        for section in ("novel_view_mse", "identity_retention"):
            metrics[section] = {key: {label: analysis.metrics[section][key] for label, analysis in analyses.items()}
                                for key in primary.metrics[section]}
        metrics["baseline"] = {**analyses[BASELINE_LABEL].metrics, "workdir": os.path.abspath(baseline.workdir),
                               "step": baseline.step}
    metrics.update({
        "workdir": os.path.abspath(run.workdir),
        "step": run.step,
        "data_dir": os.path.abspath(data_dir),
        "test_images": sample.num_images,
        "test_groups": {factor: int(len(rows)) for factor, rows in sample.groups.items()},
        "novel_view_pairs": {factor: int(len(factor_pairs)) for factor, factor_pairs in pairs.items()},
        "test_mse_images": int(len(mse_rows)),
        **references,
        "disentanglement_settings": disentanglement_settings,
        "settings": dataclasses.asdict(settings),
    })

    eval_dir = os.path.join(run.workdir, report.EVAL_DIR)
    images = report.evaluation_figures(sample, figure_rows, pairs, analyses, settings.figure_rows)
    report.write_figures(eval_dir, run.step, metrics, images)
    if settings.calibrate:
        calibration_lib.save(run.export_dir, primary.calibration)
    metrics["calibration_saved"] = bool(settings.calibrate)
    metrics["seconds"] = {"load": round(loaded - started, 2), "analyse": analyse_seconds,
                          "disentanglement": disentanglement_seconds,
                          "total": round(time.perf_counter() - started, 2)}
    metrics_path = report.write_metrics(eval_dir, metrics)
    report.log_report(log, metrics, analyses, run.export_dir, metrics_path, len(images))
    return metrics
