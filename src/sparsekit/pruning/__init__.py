"""Weight pruning. Math, as pure tensor functions: masks and Wanda scores (`masks`), SparseGPT
(`sparsegpt`), DSnoT (`dsnot`), OWL/DLP allocation (`allocation`). Plug-ins, one registry per kind
(`plugins` has the types): pruning methods (`methods`), weight updates (`updates`), refiners
(`refiners`), layer allocators (`allocators`). `pipeline` runs plan -> select -> refine -> apply
over a model through them, knowing no particular entry."""
