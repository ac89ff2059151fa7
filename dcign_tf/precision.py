"""`--precision=auto`: the Keras mixed-precision policy that is fastest on this machine.

Measured by `python -m benchmarks.bench` (README, Benchmarks): on CPUs with AVX-512 BF16 or AMX,
mixed_bfloat16 trains 1.75x faster than float32 with the same results; elsewhere on CPU bfloat16 is
emulated and slower. On GPUs of compute capability 8.0 or later (Ampere on) bfloat16 runs on the
tensor cores and needs no loss scaling, unlike mixed_float16, whose scaler skips steps.
"""

from __future__ import annotations

import contextlib

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
CPU_BF16_FEATURES = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_features(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The first processor's feature flags ("avx512_bf16", ...); empty where /proc/cpuinfo is absent."""
    with contextlib.suppress(OSError):
        with open(cpuinfo, encoding="utf-8") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return set(value.split())
    return set()


def auto_policy(gpu_compute_capabilities: list[tuple[int, int]], features: set[str]) -> str:
    """The policy `auto` picks: bfloat16 where the hardware runs it natively, float32 elsewhere.

    gpu_compute_capabilities: (major, minor) of each visible GPU (empty: train on the CPU).
    features: the CPU's feature flags.
    """
    if gpu_compute_capabilities:
        return "mixed_bfloat16" if min(gpu_compute_capabilities) >= (8, 0) else "float32"
    return "mixed_bfloat16" if features & CPU_BF16_FEATURES else "float32"


def resolve(precision: str) -> str:
    """A `--precision` value -> a Keras policy name; `auto` looks at this machine's devices."""
    if precision != "auto":
        return precision
    import tensorflow as tf

    capabilities = []
    for device in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(device).get("compute_capability")
        capabilities.append(tuple(capability) if capability else (0, 0))
    return auto_policy(capabilities, cpu_features())
