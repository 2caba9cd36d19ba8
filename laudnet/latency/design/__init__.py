"""Designing by latency: per-stage granularity search and configurations that meet a latency target."""
