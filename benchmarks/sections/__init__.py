"""The benchmark's sections: each module's `run(bench)` returns its part of the report (see benchmarks.bench)."""
