"""Plots thin long per-step lines for drawing, keeping both ends; short ones are drawn whole."""

from lesson5 import plots


def test_long_lines_are_thinned_to_the_limit_with_both_ends_kept():
    points = [(s, float(s % 7)) for s in range(1, 7036)]  # the lesson recipe's 7,035 steps
    steps, values = plots._thin(points)
    assert len(steps) <= plots.MAX_POINTS + 1
    assert (steps[0], steps[-1]) == (1, 7035) and values[-1] == points[-1][1]
    assert list(steps) == sorted(set(steps))


def test_short_lines_are_drawn_whole():
    points = [(s, s / 10) for s in range(1, 500)]
    assert plots._thin(points) == tuple(zip(*points))
