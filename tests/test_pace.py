"""The validation pace's rule (minievo.evolution.pace), one decision at a time.

Wrong implementations these tests catch: a cut that grows past the first one; a cut that
grows after an offspring that lost more than half the margin; halving with no floor (a
lineage that never ends); a floor that ends the lineage one try early; accepting a drop just
above the margin or rejecting one exactly at it.
"""

from __future__ import annotations

import pytest

from minievo.evolution.pace import ValidationPace
from minievo.experiment import UsageError


def test_accepts_up_to_the_margin_and_no_further():
    pace = ValidationPace(first_cut=0.34, margin=0.003)
    assert pace.accept(-0.01) and pace.accept(0.0) and pace.accept(0.003)
    assert not pace.accept(0.0031)


def test_a_rejection_halves_the_cut_until_the_floor_ends_the_lineage():
    pace = ValidationPace(first_cut=0.4, margin=0.003, min_cut=0.05)
    assert pace.after_rejection(0.4) == pytest.approx(0.2)
    assert pace.after_rejection(0.2) == pytest.approx(0.1)
    assert pace.after_rejection(0.1) == pytest.approx(0.05)  # exactly at the floor: one more
    assert pace.after_rejection(0.05) is None


def test_the_cut_grows_back_only_while_validation_holds_and_never_past_the_first():
    pace = ValidationPace(first_cut=0.34, margin=0.004)
    assert pace.after_acceptance(0.1, drop=0.0) == pytest.approx(0.15)
    assert pace.after_acceptance(0.1, drop=0.002) == pytest.approx(0.15)  # half the margin
    assert pace.after_acceptance(0.1, drop=0.0021) == pytest.approx(0.1)
    assert pace.after_acceptance(0.3, drop=-0.01) == pytest.approx(0.34)
    assert pace.after_acceptance(0.34, drop=0.0) == pytest.approx(0.34)


@pytest.mark.parametrize("kwargs,message", [
    (dict(first_cut=0.0, margin=0.003), r"first cut .* is outside \(0, 1\)"),
    (dict(first_cut=1.0, margin=0.003), r"first cut .* is outside \(0, 1\)"),
    (dict(first_cut=0.3, margin=0.0), r"pace margin = 0.0 is outside"),
    (dict(first_cut=0.3, margin=0.003, min_cut=0.5), r"min_cut = 0.5 must be in"),
    (dict(first_cut=0.3, margin=0.003, shrink=1.0), r"shrink must be in \(0, 1\)"),
])
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(UsageError, match=message):
        ValidationPace(**kwargs)
