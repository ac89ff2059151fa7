"""Benchmarks of dcign_tf, not installed with the package; run them from the repository root as
`python -m benchmarks.<name>`: bench (the report, one module per section in benchmarks/sections/), render_speed,
deterministic_cost; torch_reference is the PyTorch network the bench compares with."""
