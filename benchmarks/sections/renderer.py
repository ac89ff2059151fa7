"""Images/s of the faces renderer (benchmarks.render_speed: sample identities, then render) at 64x64 and
150x150, one process per core."""

from __future__ import annotations

from benchmarks.harness import TARGETS, Bench


def run(bench: Bench) -> dict:
    from benchmarks.render_speed import measure_render_throughput

    measured = {}
    for size in (64, 150):
        bench.log(f"renderer: {size}x{size}")
        rate = measure_render_throughput(size, seconds=bench.preset.render_seconds)
        target = TARGETS[f"render_{size}"]
        measured[f"render_{size}"] = {"images_per_s": rate, "image_size": size, "target": target,
                                      "met": bool(rate >= target)}
    return {"method": f"benchmarks.render_speed.measure_render_throughput(size, processes=one per core, "
                      f"seconds={bench.preset.render_seconds}): sample identities and poses, render, wall clock.",
            "results": [{"measurements": measured, "comparisons": []}]}
