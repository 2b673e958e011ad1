"""Per-layer SQNR (the ranking itself runs on real models in tests/vision/pipeline/test_compare.py)."""

from __future__ import annotations

import numpy as np
import pytest

from vision.evaluation.sensitivity import sqnr_db


def test_sqnr_values() -> None:
    ref = np.ones(100)
    assert sqnr_db(ref, ref) == float("inf")
    assert sqnr_db(ref, ref * 1.1) == pytest.approx(20.0)  # noise 0.1 of signal: 20 dB
    assert sqnr_db(ref, ref * 1.01) == pytest.approx(40.0)
