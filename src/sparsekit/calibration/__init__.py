"""Calibration: per-linear input statistics (`stats`, pure tensor accumulators) and the sequential
engine that runs a model one decoder layer at a time on cached activations, capturing each layer's
own call arguments (`capture`, `engine`). The engine knows no pruning method and no file format."""
