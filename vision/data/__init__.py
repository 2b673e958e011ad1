"""Input data: images and letterboxed calibration batches, and the generated (synthetic) labelled scenes."""
