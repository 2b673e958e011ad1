"""Text: calibration, search and evaluation documents with their deterministic split (``documents``), and the
bundled offline corpus (``corpus/``, package data)."""
