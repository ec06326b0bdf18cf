"""Group planning: exactly N slices per group, the remainder policy, nothing dropped by default."""

from __future__ import annotations

import itertools

import pytest

from liverseg.errors import InputError
from liverseg.imaging.grouping import dropped_slices, plan_groups


@pytest.mark.parametrize("n", [64, 65, 127, 128, 134, 200])
def test_overlap_policy_covers_every_slice_with_full_groups(n):
    groups = plan_groups(n, 64, "overlap")
    assert all(g.stop - g.start == 64 for g in groups)
    assert dropped_slices(n, groups) == 0
    assert groups[-1].stop == n
    for prev, g in itertools.pairwise(groups):
        assert g.overlap == max(0, prev.stop - g.start)


def test_134_slices_make_three_groups_the_last_overlapping_by_58():
    groups = plan_groups(134, 64, "overlap")
    assert [(g.start, g.stop, g.overlap) for g in groups] == [(0, 64, 0), (64, 128, 0), (70, 134, 58)]


def test_drop_policy_is_the_published_method():
    groups = plan_groups(134, 65, "drop")
    assert [(g.start, g.stop) for g in groups] == [(0, 65), (65, 130)]
    assert dropped_slices(134, groups) == 4


def test_too_few_slices_is_an_input_error():
    with pytest.raises(InputError, match="40 slices, fewer than the group size 64"):
        plan_groups(40, 64)
