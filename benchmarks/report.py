"""The benchmark's report: the machine it ran on, and its headline numbers as a text or Markdown table."""

from __future__ import annotations

import contextlib
import math
import os
import platform

HEADER = ("section", "measurement", "value", "ratio", "target", "met")


def machine(threads: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    cpu_model, flags = platform.processor() or "unknown", set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and cpu_model in ("unknown", platform.processor()):
                    cpu_model = value.strip()
                if key.strip() == "flags" and not flags:
                    flags = set(value.split())
    info = {"cpu_model": cpu_model, "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_features": sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                                            "amx_tile"}),
            "python": platform.python_version(), "platform": platform.platform(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "threads": threads, "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 Linux)"),
            "gpus": [device.name for device in tf.config.list_physical_devices("GPU")],
            "load_average_start": os.getloadavg()}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def _format(value, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if unit in ("FLOP/s", "flop_per_s"):
        return f"{value / 1e9:.1f} GFLOP/s"
    if abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def _met(entry: dict) -> str:
    return ("yes" if entry["met"] else "NO") if "met" in entry else ""


def _measurement_cells(entry: dict) -> tuple[str, str] | None:
    """(value, target) cells of one measurement, or None for an entry without a headline number."""
    if "images_per_s" in entry:
        value = _format(entry["images_per_s"], "img/s")
        if "cores_busy" in entry:
            value += f" ({entry['cores_busy']:.1f} cores busy)"
        if "step_s" in entry:
            value += (f", {_format(entry['step_s'], 's')}/step, peak RSS {entry['peak_rss_mib']:.0f} "
                      f"MiB (training +{entry['training_memory_mib']:.0f})")
    elif "flop_per_s" in entry:
        value = _format(entry["flop_per_s"], "FLOP/s")
    elif "ms_per_render" in entry:
        return (f"{_format(entry['ms_per_render'], 'ms')} per slider move ({entry['renders']} moves)",
                f"<= {_format(entry['target_ms'], 'ms')}")
    else:
        return None
    target = entry.get("target")
    return value, _format(target) if target else ""


def table_rows(report: dict, sections) -> list[tuple[str, str, str, str, str, str]]:
    """(section, what, value, ratio, target, met) rows of the report's headline numbers, in `sections` order."""
    rows = []
    for section in sections:
        block = report.get(section, {})
        if block.get("status") != "ok":
            rows.append((section, f"{block.get('status', 'missing')}: {block.get('reason', '')}", "", "", "", ""))
            continue
        for result in block["results"]:
            where = " ".join(part for part in (
                result.get("device") if result.get("device", "CPU") != "CPU" else None,
                f"{result['image_size']}px" if "image_size" in result else None, result.get("variant")) if part)
            for name, entry in result["measurements"].items():
                cells = _measurement_cells(entry)
                if cells:
                    rows.append((section, f"{where} {name}".strip(), cells[0], "", cells[1], _met(entry)))
            for entry in result["comparisons"]:
                rows.append((section, f"{where} {entry['numerator']} / {entry['denominator']}".strip(), "",
                             f"{entry['ratio']:.3f}", _format(entry.get("target")) if "target" in entry else "",
                             _met(entry)))
            for key in ("torch_compile_error", "torch_compile_skipped"):
                if key in result:
                    rows.append((section, f"{where} torch_compile", result[key][:120], "", "", ""))
            for name, error in result.get("errors", {}).items():
                rows.append((section, f"{where} {name}", f"failed: {error[:120]}", "", "", ""))
    return rows


def format_table(report: dict, sections) -> str:
    rows = [HEADER] + table_rows(report, sections)
    widths = [min(70, max(len(row[i]) for row in rows)) for i in range(len(HEADER))]
    lines = ["  ".join(cell[:70].ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_markdown(report: dict, sections, command: str) -> str:
    m = report["machine"]
    lines = [f"Measured with `{command} --size={report['size']}` on {m['cpu_model']} "
             f"({m['cores']} cores, {m['threads']} threads per framework), TensorFlow {m['tensorflow']}, "
             f"Keras {m['keras']}" + (f", PyTorch {m['torch']}" if m.get("torch") else "") +
             f"; load average {m['load_average_start'][0]:.1f} at the start (a shared machine: compare ratios, "
             "which were measured side by side, rather than absolute numbers).", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in table_rows(report, sections):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)
