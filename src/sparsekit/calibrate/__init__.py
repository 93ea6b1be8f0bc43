"""Calibration statistics: per-layer input accumulators (pure tensor code, no hooks)."""
