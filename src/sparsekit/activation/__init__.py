"""Dynamic activation sparsity (TEAL, CHESS, WINA): statistics sketches, thresholds, greedy
allocation, and the on-disk format. The runtime wrapper lives in
:mod:`sparsekit.runtime.act_sparse`.

Flow: `plan_activation` (sites of a method) -> `collect_sketches` / `SketchCollector`
(calibration) -> `compute_thresholds` (uniform) or `allocate_block` (greedy, per block) ->
`save_activation`; at load, `apply_activation` installs the wrappers.
"""

from sparsekit.activation.allocation import (
    Allocation,
    allocate_block,
    block_output_error,
    effective_sparsity,
    greedy_allocation,
)
from sparsekit.activation.collect import SketchCollector, collect_sketches
from sparsekit.activation.plan import METHODS, Plan, Point, Site, calibration_points, plan_activation
from sparsekit.activation.recipe import (
    SiteThresholds,
    activation_section,
    compute_thresholds,
    site_thresholds,
)
from sparsekit.activation.sketch import ActivationSketch, sketch_bytes
from sparsekit.activation.store import (
    ACTIVATION_FILE,
    activation_tensors,
    apply_activation,
    load_activation,
    save_activation,
)
from sparsekit.activation.thresholds import (
    Threshold,
    chess_thresholds,
    column_norms,
    pooled_threshold,
    teal_threshold,
    wina_threshold,
    zeroed_fraction,
)

__all__ = [
    "ACTIVATION_FILE", "METHODS", "ActivationSketch", "Allocation", "Plan", "Point", "Site", "SiteThresholds",
    "SketchCollector", "Threshold", "activation_section", "activation_tensors", "allocate_block",
    "apply_activation", "block_output_error", "calibration_points", "chess_thresholds", "collect_sketches",
    "column_norms", "compute_thresholds", "effective_sparsity", "greedy_allocation", "load_activation",
    "plan_activation", "pooled_threshold", "save_activation", "site_thresholds", "sketch_bytes",
    "teal_threshold", "wina_threshold", "zeroed_fraction",
]
