"""Export pruned models in a format (`codecs`: one codec per format, registered in
``FORMATS``), and load exports back (`loader`). The tensor math of the compressed-tensors sparse
formats is in `formats`; file layout helpers are in `sparsekit.files`. Import the submodules;
this package imports nothing."""
