"""Runtime modules swapped in for ``nn.Linear`` after a model is loaded (2:4 sparse linears,
activation-sparse linears). They call the ops in :mod:`sparsekit.kernels`; the model class
never knows. Import the submodules directly; this package imports nothing eagerly."""
