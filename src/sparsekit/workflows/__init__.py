"""The library call behind each command (`calibrate`, `prune`, `evaluate`, `export`, `bench`,
`info`): it checks every option before anything slow, takes a progress callback
``progress(stage, done, total)``, returns a result value and never prints. The package root
exposes them as ``sparsekit.prune(...)`` and so on. Import the submodules; this package imports
nothing."""
