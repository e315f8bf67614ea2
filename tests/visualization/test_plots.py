"""Line charts: ticks are round and cover the data; series land where their values say."""

from __future__ import annotations

import numpy as np
import pytest

from limner.visualization.plots import line_chart, nice_ticks


@pytest.mark.parametrize("low,high", [(0, 1), (0, 37.2), (3.1, 3.4), (-5, 120), (0, 0)])
def test_nice_ticks_are_round_and_cover_the_range(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and 3 <= len(ticks) <= 12
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0])
    mantissa = steps[0] / 10 ** np.floor(np.log10(steps[0]))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-9


def test_line_chart_draws_each_series_in_its_colour():
    image = line_chart({"a": ([5, 10, 20], [30.0, 12.0, 8.0]), "b": ([50], [9.0])}, logx=True,
                       title="FD vs steps", xlabel="NFE", ylabel="FD")
    pixels = np.asarray(image)
    assert image.size == (640, 400)
    assert (np.all(pixels == (31, 119, 180), axis=-1)).sum() > 50  # series a (line + markers + legend)
    assert (np.all(pixels == (255, 127, 14), axis=-1)).sum() > 20  # series b (one marker + legend)


def test_line_chart_refuses_bad_input():
    with pytest.raises(ValueError):
        line_chart({})
    with pytest.raises(ValueError, match="logx"):
        line_chart({"a": ([0, 1], [1, 2])}, logx=True)
