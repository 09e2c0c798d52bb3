"""llm.c's OutlierDetector: the z-score of each new value against the last 128 values (itself
included), NaN while the window fills, 0 when the window is constant."""

import math

import numpy as np

from llmc.core.outliers import WINDOW, OutlierDetector


def test_window_is_llmc():
    assert WINDOW == 128


def test_nan_until_the_window_is_full():
    det = OutlierDetector()
    assert all(math.isnan(det.update(float(v))) for v in range(WINDOW))
    assert math.isfinite(det.update(1.0))


def test_z_scores_match_numpy_on_the_sliding_window():
    values = np.random.default_rng(0).normal(3.0, 0.5, 600)
    values[300] = 40.0  # a spike, then the window carries it for 128 steps
    det = OutlierDetector()
    got = np.array([det.update(float(v)) for v in values])
    windows = np.lib.stride_tricks.sliding_window_view(values, WINDOW)  # windows[k] ends at value k + 127
    want = (values[WINDOW - 1:] - windows.mean(axis=1)) / windows.std(axis=1)
    np.testing.assert_allclose(got[WINDOW:], want[1:], rtol=1e-9, atol=1e-9)
    assert got[300] > 10


def test_constant_window_gives_zero():
    det = OutlierDetector()
    for _ in range(WINDOW):
        det.update(2.5)
    assert det.update(2.5) == 0.0


def test_state_restore_continues_the_same_scores():
    values = np.random.default_rng(1).normal(size=300).tolist()
    det = OutlierDetector()
    for v in values[:200]:
        det.update(v)
    other = OutlierDetector()
    other.restore(det.state())
    assert len(det.state()) == WINDOW
    for v in values[200:]:
        a, b = det.update(v), other.update(v)
        assert abs(a - b) < 1e-9
