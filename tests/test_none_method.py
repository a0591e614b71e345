"""The `none` baseline: every candidate gets a rejected row, whatever the budget."""
from __future__ import annotations

import numpy as np
import pytest
from method_fixtures import make_request

from albat.pipeline.methods.base import get_method
from albat.pipeline.methods.none_method import NoneMethod

REASON = "rejected: method none selects no backbone data"


@pytest.mark.parametrize("budget", [0, 3, 10**9])  # any budget, even one far above the pool
def test_none_rejects_every_candidate_with_one_reason(budget):
    request = make_request(None, [30, 10, 20], blocked={20: "exact duplicate of exclude example 0"}, budget=budget)
    result = NoneMethod().select(request)
    assert result.ids.tolist() == [10, 20, 30]  # candidates come sorted by id
    assert result.keep.tolist() == [False, False, False]
    assert result.rank.tolist() == [-1, -1, -1]
    assert result.reason == [REASON] * 3
    assert result.score.tolist() == [0.0, 0.0, 0.0]
    assert result.query_idx.tolist() == [1, 0, 0]  # pair i is retrieved by example i % 2: 30 by 0, 10 by 1, 20 by 0
    table = result.to_table("none")
    assert table.num_rows == 3 and table.column("method").to_pylist() == ["none"] * 3


def test_none_with_no_candidates():
    result = NoneMethod().select(make_request(None, [], blocked={}, budget=5))
    assert len(result.ids) == 0 and result.to_table("none").num_rows == 0


def test_none_is_registered():
    assert isinstance(get_method("none"), NoneMethod)
    assert np.array_equal(get_method("none").select(make_request(None, [7], {}, 1)).keep, [False])
