"""Scale spread over calibration subsets: per tensor, scalar or per channel, flagged above a threshold."""

from __future__ import annotations

import numpy as np
import pytest

from quant_common.errors import QuantError
from quant_common.stability import scale_spread


def test_spread_is_the_range_over_subsets_relative_to_the_full_amax():
    full = {"steady": 10.0, "outlier": 10.0, "channels": np.array([1.0, 4.0, 2.0]), "dead": 0.0}
    subsets = [{"steady": 9.8, "outlier": 10.0, "channels": np.array([1.0, 4.0, 2.0]), "dead": 0.0},
               {"steady": 10.0, "outlier": 3.0, "channels": np.array([0.9, 4.0, 1.0]), "dead": 0.0},
               {"steady": 9.9, "outlier": 4.0, "channels": np.array([1.0, 3.6, 2.0]), "dead": 0.0}]
    report = scale_spread(full, subsets, [5, 6, 4], threshold=0.1)
    by_name = {s.tensor: s for s in report.spreads}
    assert set(by_name) == {"steady", "outlier", "channels"}  # an all-zero amax has no relative spread
    assert by_name["steady"].spread == pytest.approx(0.02)
    assert by_name["outlier"].spread == pytest.approx(0.7) and by_name["outlier"].low == 3.0
    assert by_name["channels"].spread == pytest.approx(0.5)  # channel 2: 1.0..2.0 of 2.0
    assert report.unstable == ["outlier", "channels"] and report.max_spread == pytest.approx(0.7)
    assert "2 of 3 tensors unstable" in report.summary() and "outlier" in report.summary()
    assert report.to_dict()["most_unstable"][0]["tensor"] == "outlier"


def test_one_subset_cannot_show_a_spread():
    with pytest.raises(QuantError, match="cannot show a spread"):
        scale_spread({"a": 1.0}, [{"a": 1.0}], [3])
