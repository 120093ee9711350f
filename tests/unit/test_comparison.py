"""Runs side by side (mist_core.comparison), on numbers worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mist_core.comparison import (
    GroupEstimate,
    differing_settings,
    ema,
    group_by_seed,
    mean_curve,
    mean_estimates,
    repeat_configs,
    seed_key,
)
from mist_core.experiment import ExperimentConfig, preset
from mist_core.results import PairEstimate
from mist_core.runs import RunInfo, RunStatus

NAN = float("nan")
BASE = preset("demo-cpu", epochs=1)


def _info(name: str, config: object) -> RunInfo:
    return RunInfo(name, Path(name), RunStatus.FINISHED, 0.0, config, None, None, None)


# --- seed groups ----------------------------------------------------------------------------


def test_seed_key_ignores_only_the_seed():
    assert seed_key(BASE.replace(seed=0)) == seed_key(BASE.replace(seed=41))
    assert seed_key(BASE) != seed_key(BASE.replace(epochs=2))
    assert seed_key(BASE) != seed_key(BASE.replace(device="cpu"))
    # a run's plain JSON config gives the same key, whatever the order of its fields
    fields = BASE.to_dict()
    assert seed_key(dict(reversed(list(fields.items())))) == seed_key(BASE)
    assert "seed" not in seed_key(BASE)
    with pytest.raises(TypeError, match="ExperimentConfig or a mapping"):
        seed_key(None)


def test_group_by_seed_keeps_first_appearance_and_isolates_unreadable_configs():
    infos = [
        _info("a", BASE.replace(seed=0)),
        _info("b", BASE.replace(seed=0, epochs=2)),
        _info("c", BASE.replace(seed=1)),
        _info("broken", None),
        _info("d", BASE.replace(seed=2)),
        _info("broken-too", None),
    ]
    groups = group_by_seed(infos)
    assert [[i.name for i in g.runs] for g in groups] == [
        ["a", "c", "d"],
        ["b"],
        ["broken"],
        ["broken-too"],
    ]
    assert groups[0].seeds == (0, 1, 2) and groups[1].seeds == (0,)
    assert groups[0].key == seed_key(BASE)
    assert groups[2].key == "run:broken" and groups[2].seeds == (None,)
    assert group_by_seed([]) == []


# --- mean and spread ------------------------------------------------------------------------


def test_mean_estimates_by_hand():
    tables = [
        [
            PairEstimate("e1", "nose", 1.0, 0.1),
            PairEstimate("e1", "left_eye", 0.5, 0.1),
            PairEstimate("e2", "left_eye", NAN, NAN),
        ],
        [
            PairEstimate("e1", "nose", 1.2, 0.1),
            PairEstimate("e1", "left_eye", NAN, 0.1),
            PairEstimate("e2", "nose", 2.0, 0.3),
        ],
        [PairEstimate("e1", "nose", 1.4, 0.1), PairEstimate("e1", "left_eye", 0.7, 0.1)],
    ]
    out = mean_estimates(tables)
    assert [(e.representation, e.target) for e in out] == [
        ("e1", "nose"),
        ("e1", "left_eye"),
        ("e2", "left_eye"),
        ("e2", "nose"),
    ], "the order the pairs first appear"
    nose, eye, empty, single = out
    # 1.0, 1.2, 1.4: mean 1.2, s = sqrt((0.04 + 0 + 0.04) / 2) = 0.2, s.e. = 0.2 / sqrt(3)
    assert nose.k == 3 and nose.values == (1.0, 1.2, 1.4)
    assert nose.mi == pytest.approx(1.2) and nose.std_error == pytest.approx(0.2 / math.sqrt(3))
    # 0.5, NaN, 0.7: the NaN left out; s = sqrt(0.02), s.e. = sqrt(0.02) / sqrt(2) = 0.1
    assert eye.k == 2 and eye.mi == pytest.approx(0.6) and eye.std_error == pytest.approx(0.1)
    # every value NaN: k = 0, no number
    assert empty.k == 0 and math.isnan(empty.mi) and math.isnan(empty.std_error)
    # one run: its own standard error
    assert single.k == 1 and single.mi == 2.0 and single.std_error == 0.3
    assert nose.name == "I(e1;nose)" and isinstance(nose, GroupEstimate)
    assert mean_estimates([]) == []


def test_mean_curve_on_shared_steps_with_a_nan():
    curves = [
        [(0, 1.0), (10, 2.0), (20, 3.0)],
        [(0, 3.0), (10, 4.0), (20, NAN), (30, 9.0)],  # step 30: not shared, left out
        [(0, 2.0), (10, 3.0), (20, 4.0)],
    ]
    steps, mean, se = mean_curve(curves)
    assert steps.tolist() == [0, 10, 20] and steps.dtype == np.int64
    np.testing.assert_allclose(mean, [2.0, 3.0, 3.5])
    # s = 1 at steps 0 and 10 (k = 3); at 20 only 3 and 4 (k = 2): s = sqrt(0.5), s.e. 0.5
    np.testing.assert_allclose(se, [1 / math.sqrt(3), 1 / math.sqrt(3), 0.5])


def test_mean_curve_of_one_curve_has_no_spread():
    steps, mean, se = mean_curve([[(1, 0.5), (2, NAN), (3, 0.25)]])
    assert steps.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(mean, [0.5, NAN, 0.25])
    np.testing.assert_array_equal(se, [0.0, NAN, 0.0])


def test_mean_curve_interpolates_when_no_step_is_shared():
    a = [(0, 0.0), (10, 10.0)]
    b = [(5, 1.0), (15, 3.0)]
    steps, mean, se = mean_curve([a, b])
    # range both cover: [5, 10]; steps there: 5 (b's) and 10 (a's); a(5) = 5, b(10) = 2
    assert steps.tolist() == [5, 10]
    np.testing.assert_allclose(mean, [3.0, 6.0])
    # at 5: 5 and 1, s = sqrt(8), s.e. = 2; at 10: 10 and 2, s = sqrt(32), s.e. = 4
    np.testing.assert_allclose(se, [2.0, 4.0])


def test_mean_curve_without_overlap_or_curves_is_empty():
    for curves in ([], [[(0, 1.0), (1, 2.0)], [(5, 1.0)]], [[(0, 1.0)], []]):
        steps, mean, se = mean_curve(curves)
        assert len(steps) == len(mean) == len(se) == 0


def test_ema_by_hand():
    # w = 0.6: m = 0.8, 2.08, 3.648; debiased by 1 - 0.6^n = 0.4, 0.64, 0.784
    np.testing.assert_allclose(ema([2.0, 4.0, 6.0], 0.6), [2.0, 3.25, 3.648 / 0.784])
    np.testing.assert_array_equal(ema([1.0, NAN, 3.0], 0.0), [1.0, 1.0, 3.0])
    smoothed = ema([NAN, 2.0, float("inf"), 4.0], 0.5)
    assert math.isnan(smoothed[0])
    # the first finite value counts as n = 1: m = 1.0 / 0.5; inf carried; m = 2.5 / 0.75
    np.testing.assert_allclose(smoothed[1:], [2.0, 2.0, 2.5 / 0.75])
    assert ema([], 0.9).shape == (0,)
    for weight in (1.0, -0.1, NAN, True, "0.5"):
        with pytest.raises(ValueError, match=r"weight must be a number in \[0, 1\)"):
            ema([1.0], weight)


# --- settings -------------------------------------------------------------------------------


def test_differing_settings_of_two_seeds_and_epochs():
    frame = differing_settings(
        {"r0": BASE.replace(seed=0, epochs=1), "r1": BASE.replace(seed=1, epochs=2)}
    )
    assert frame.index.tolist() == ["epochs", "seed"], "in the config's field order"
    assert frame.index.name == "setting" and frame.columns.tolist() == ["r0", "r1"]
    assert frame.loc["epochs"].tolist() == ["1", "2"]
    assert frame.loc["seed"].tolist() == ["0", "1"]


def test_differing_settings_shows_lists_and_nones_as_short_text():
    frame = differing_settings(
        {
            "a": BASE,
            "b": BASE.replace(encoders=("random_init",), train_size=100),
            "c": {**BASE.to_dict(), "train_size": None, "extra": 1},
        }
    )
    assert frame.loc["encoders"].tolist() == [
        "random_init, trained",
        "random_init",
        "random_init, trained",
    ]
    assert frame.loc["train_size"].tolist() == ["3000", "100", "none"]
    assert frame.loc["extra"].tolist() == ["(not set)", "(not set)", "1"]


def test_differing_settings_of_equal_configs_is_empty():
    frame = differing_settings({"x": BASE, "y": BASE.replace()})
    assert frame.empty and frame.columns.tolist() == ["x", "y"]
    assert differing_settings({"only": BASE}).empty


def test_repeat_configs_takes_the_smallest_free_seeds_above():
    repeats = repeat_configs(BASE.replace(seed=0), 3, taken=[2, 7])
    assert [c.seed for c in repeats] == [1, 3, 4]
    assert all(seed_key(c) == seed_key(BASE) for c in repeats), "only the seed changes"
    assert all(isinstance(c, ExperimentConfig) for c in repeats)
    assert [c.seed for c in repeat_configs(BASE.replace(seed=5))] == [6, 7, 8]
    assert repeat_configs(BASE, 0) == []
    for n in (-1, 1.5, True):
        with pytest.raises(ValueError, match="n must be an integer >= 0"):
            repeat_configs(BASE, n)
    with pytest.raises(ValueError, match="not enough free seeds"):
        repeat_configs(BASE.replace(seed=2**32 - 2), 2)
