"""Precision, XLA and the decoder's implementation: FLOPs per image (paper architecture and executed sub-pixel
count) x images/s, as a fraction of a large dense matmul's FLOP rate measured in the same run; variants XLA,
bf16 (fp16 on a GPU), the naive decoder, and the convolutions in NHWC vs NCHW. A GPU column appears when a GPU
is visible."""

from __future__ import annotations

from benchmarks.harness import Bench
from benchmarks.sections.conv_layout import layout_result
from benchmarks.timing import Contender, comparison, timed_calls


def variants(device: str) -> dict[str, dict]:
    """Variant name -> KerasTrainer options; the low precision is bfloat16 on a CPU, float16 on a GPU."""
    low = "mixed_bfloat16" if device == "CPU" else "mixed_float16"
    return {"float32": {}, "float32_xla": {"jit_compile": True}, low: {"precision": low},
            f"{low}_xla": {"precision": low, "jit_compile": True},
            "float32_naive_decoder": {"implementation": "naive"}}


def matmul_contender(bench: Bench, device: str, dtype: str) -> Contender:
    """An NxN tf.linalg.matmul on `device` in `dtype` (N: the preset's matmul_size); units are FLOPs."""
    import tensorflow as tf

    n = bench.preset.matmul_size
    with tf.device(f"/{device}:0"):
        a = tf.cast(tf.random.uniform([n, n], -1.0, 1.0, seed=1), dtype)
        b = tf.cast(tf.random.uniform([n, n], -1.0, 1.0, seed=2), dtype)

    @tf.function
    def product():
        with tf.device(f"/{device}:0"):
            return tf.reduce_sum(tf.cast(tf.linalg.matmul(a, b), tf.float32))

    return Contender(f"matmul_{dtype}", timed_calls(product), 2.0 * n ** 3)


def _rename(entry: dict, old: str, new: str) -> dict:
    return {(new if key == old else key): value for key, value in entry.items()}


def _device_result(bench: Bench, device: str, size: int) -> dict:
    from dcign_tf.model import flops_per_image

    bench.log(f"flops: {device} {size}x{size}")
    counts = {"paper_architecture": flops_per_image(bench.config(size, decoder_implementation="naive")),
              "subpixel_executed": flops_per_image(bench.config(size))}
    low = "bfloat16" if device == "CPU" else "float16"
    contenders = [matmul_contender(bench, device, "float32"), matmul_contender(bench, device, low)]
    chosen = {name: options for name, options in variants(device).items()
              if name in bench.preset.flops_variants or name.replace("float16", "bfloat16")
              in bench.preset.flops_variants}
    for name, options in chosen.items():
        contenders.append(bench.keras_contender(name, size, device=None if device == "CPU" else f"/{device}:0",
                                                **options))
    measured, errors = bench.measure(contenders)
    measured = {name: _rename(entry, "images_per_s", "flop_per_s") if name.startswith("matmul") else entry
                for name, entry in measured.items()}
    comparisons = []
    for name, options in chosen.items():
        if name not in measured:
            continue
        entry = measured[name]
        naive = options.get("implementation") == "naive"
        executed = counts["paper_architecture" if naive else "subpixel_executed"]["train"]
        entry["executed_train_flops_per_image"] = executed
        entry["executed_flop_per_s"] = entry["images_per_s"] * executed
        entry["paper_architecture_flop_per_s"] = entry["images_per_s"] * counts["paper_architecture"]["train"]
        matmuls = ["matmul_float32"] + ([f"matmul_{low}"] if options.get("precision", "float32") != "float32" else [])
        for matmul in (m for m in matmuls if m in measured):
            comparisons.append(comparison(
                f"{name}_executed_fraction_of_{matmul}", f"{name}.executed_flop_per_s",
                entry["executed_flop_per_s"], f"{matmul}.flop_per_s", measured[matmul]["flop_per_s"],
                unit="FLOP/s"))
            comparisons.append(comparison(
                f"{name}_paper_fraction_of_{matmul}", f"{name}.paper_architecture_flop_per_s",
                entry["paper_architecture_flop_per_s"], f"{matmul}.flop_per_s",
                measured[matmul]["flop_per_s"], unit="FLOP/s",
                note="counts the paper architecture's FLOPs (naive decoder), whatever was executed"))
        if name != "float32" and "float32" in measured:
            comparisons.append(comparison(f"{name}_vs_float32", name, entry["images_per_s"], "float32",
                                          measured["float32"]["images_per_s"]))
    result = {"device": device, "image_size": size, "flops_per_image": counts, "measurements": measured,
              "comparisons": comparisons}
    if errors:
        result["errors"] = errors
    return result


def run(bench: Bench) -> dict:
    import tensorflow as tf

    devices = ["CPU"] + (["GPU"] if tf.config.list_physical_devices("GPU") else [])
    results = []
    for device in devices:
        results.extend(_device_result(bench, device, size) for size in bench.preset.flops_sizes)
        if device == "CPU":
            results.append(layout_result(bench, bench.preset.flops_sizes[0]))
    return {"method": "FLOPs per image from the layer shapes (dcign_tf.model.flops_per_image: multiply-adds x 2, "
                      "training = 3 x forward), x images/s, / the FLOP rate of an NxN tf.linalg.matmul timed "
                      f"in the same interleaved loop (N={bench.preset.matmul_size}). 'executed' counts what runs "
                      "(sub-pixel decoder: 16 instead of 49 taps); 'paper' counts the paper architecture "
                      "(naive upsample + 7x7 conv) whatever runs. Variants: XLA (jit_compile), "
                      "keras.mixed_precision mixed_bfloat16 (CPU) / mixed_float16 (GPU), naive decoder. "
                      "layout: the network's convolutions alone (encoder convs + pools, sub-pixel decoder convs, "
                      "forward + backward) in NHWC vs NCHW, since the Keras model is NHWC-only "
                      "(depth_to_space has no NCHW CPU kernel; NCHW uses a reshape/transpose).",
            "devices": devices, "results": results}
