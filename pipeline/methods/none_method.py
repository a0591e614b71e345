"""`none`: the adaptation-only baseline; it selects no backbone data at all.

Why: the benchmark must show that adding backbone data helps at all, so "train on D_A alone" runs
through the same stages as every other method. The budget is ignored (any budget, including one
larger than the candidate pool, is accepted): the method's answer is always "nothing". Every
candidate still gets a row and a reason, so its selection table has the same shape as the others'.
"""
from __future__ import annotations

import numpy as np

from albat.pipeline.methods.base import SelectionMethod, SelectionRequest, SelectionResult
from albat.pipeline.methods.ranked import candidate_columns

REASON = "rejected: method none selects no backbone data"


class NoneMethod(SelectionMethod):
    name = "none"

    def select(self, request: SelectionRequest) -> SelectionResult:
        ids, query_idx, _ = candidate_columns(request.candidates)
        n = len(ids)
        return SelectionResult(ids=ids, score=np.zeros(n), keep=np.zeros(n, bool), reason=[REASON] * n,
                               rank=np.full(n, -1, np.int64), query_idx=query_idx)
