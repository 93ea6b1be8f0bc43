"""Every on-disk format sparsekit reads or writes, in one place: the model-directory layout and the
safetensors integrity check (`layout`), ``sparsekit.json`` (`meta`), the pruned model directory
(`modeldir`), calibration statistics (`statsfile`), activation thresholds (`thresholds`), layer
allocation files (`allocation`), and outputs that appear whole or not at all (`atomic`). Import the
submodules; this package imports nothing."""
