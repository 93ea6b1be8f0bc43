"""Dynamic activation sparsity (TEAL, CHESS, WINA).

Math (pure tensor functions): `sketch` (per-channel histograms of |x|), `thresholds` (a
threshold for a target sparsity), `allocation` (greedy per-site sparsities). Plug-ins: `methods`
(one record per method: where it sparsifies and what weighs an input). Model-facing: `plan`
(the sites of a method in a model), `collect` (sketches from hooks), `sites` (thresholds per
site), `calibrate` (staged calibration inside the model), `stage` (the step of `sparsekit
prune`). The runtime wrapper is `sparsekit.runtime.act_sparse`; the thresholds file is
`sparsekit.files.thresholds`. Import the submodules; this package imports nothing.
"""
