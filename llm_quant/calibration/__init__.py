"""modelopt calibration (``calibrate``): per-group SmoothQuant scales (``smoothing``), per-token activations
(``per_token``), and the layers kept in higher precision, named for every consumer (``exclusions``)."""
