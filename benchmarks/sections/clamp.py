"""Train-step speed: DC-IGN (the clamp and the invariance-gradient rewrite) against the same network trained as a
plain VAE."""

from __future__ import annotations

from benchmarks.harness import TARGETS, Bench
from benchmarks.timing import comparison


def run(bench: Bench) -> dict:
    results = []
    for size in bench.preset.clamp_sizes:
        bench.log(f"clamp: {size}x{size}")
        measured, errors = bench.measure([bench.keras_contender("dcign", size, mode="dcign"),
                                          bench.keras_contender("baseline", size, mode="baseline")])
        if errors:
            raise RuntimeError(f"{size}x{size}: {errors}")
        results.append({"image_size": size, "measurements": measured, "comparisons": [comparison(
            f"clamp_{size}", "dcign", measured["dcign"]["images_per_s"], "baseline",
            measured["baseline"]["images_per_s"], target=TARGETS["clamp"])]})
    return {"method": "Keras train function (as model.fit runs it) on one in-memory batch, float32, no XLA; "
                      "DC-IGN (mode dcign: clamp + gradient rewrite) vs the same network as a plain VAE "
                      "(mode baseline), interleaved, medians.",
            "results": results}
