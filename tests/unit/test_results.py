"""PairEstimate, its JSON form, pair names and the table."""

from __future__ import annotations

import json
import math

import pytest

from mist_core.results import PairEstimate, pair_name, parse_pair_name, to_frame


def test_pair_names_round_trip_and_bad_names_fail():
    assert pair_name("random_init", "nose") == "I(random_init;nose)"
    assert parse_pair_name("I(random_init;nose)") == ("random_init", "nose")
    assert parse_pair_name(pair_name("a(b)", "c;d")) == ("a(b)", "c;d")  # split at the first ;
    for bad in ("loss", "I(ab)", "I(a;b", "J(a;b)"):
        with pytest.raises(ValueError, match="I\\(x;y\\)"):
            parse_pair_name(bad)


def test_to_dict_from_dict_round_trip_through_json():
    estimate = PairEstimate("trained", "left_eye", 0.75, 0.02, n=512, estimator="doe")
    assert estimate.name == "I(trained;left_eye)"
    row = json.loads(json.dumps(estimate.to_dict()))
    assert row == {
        "encoder": "trained",
        "landmark": "left_eye",
        "mi": 0.75,
        "std_error": 0.02,
        "n": 512,
        "estimator": "doe",
        "warnings": [],
    }
    assert PairEstimate.from_dict(row) == estimate


def test_from_dict_reads_rows_of_older_runs():
    old = {"encoder": "e", "landmark": "nose", "mi": 1, "std_error": float("nan")}
    estimate = PairEstimate.from_dict(old)
    assert (estimate.representation, estimate.target, estimate.mi) == ("e", "nose", 1.0)
    assert isinstance(estimate.mi, float) and math.isnan(estimate.std_error)
    assert estimate.n is None and estimate.estimator is None and estimate.warnings == ()
    with pytest.raises(KeyError):
        PairEstimate.from_dict({"encoder": "e", "landmark": "nose", "mi": 1.0})


def test_to_frame_has_exactly_the_table_columns():
    estimates = [
        PairEstimate("a", "nose", 0.5, 0.1, 10, "doe"),
        PairEstimate("b", "nose", 0.25, 0.05),
    ]
    frame = to_frame(estimates)
    assert list(frame.columns) == ["encoder", "landmark", "mi", "std_error"]
    assert frame.values.tolist() == [["a", "nose", 0.5, 0.1], ["b", "nose", 0.25, 0.05]]
    assert list(to_frame([]).columns) == ["encoder", "landmark", "mi", "std_error"]
