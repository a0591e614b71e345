"""The held-out AUC of benchmarks/lm_row_signal.py on hand-checkable scores."""
import pytest

from benchmarks.lm_row_signal import held_out_auc


def test_auc_counts_pairs_and_half_ties():
    # pairs (held, kept): (2,1) 1, (2,2) 0.5, (3,1) 1, (3,2) 1 -> 3.5 / 4
    assert held_out_auc([2.0, 3.0], [1.0, 2.0]) == pytest.approx(0.875)


def test_auc_extremes():
    assert held_out_auc([5.0, 6.0], [0.0, 1.0, 2.0]) == 1.0
    assert held_out_auc([0.0], [1.0, 2.0]) == 0.0
    assert held_out_auc([1.0, 1.0], [1.0]) == 0.5
