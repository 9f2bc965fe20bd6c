"""Operator tools, imported by the CLI only: topology commands, DLQ tooling, reports, health, users,
Flower, the benchmark and the demos."""
