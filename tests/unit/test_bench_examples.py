"""The truths of ``bench.accuracy.examples`` and ``bench.accuracy.fixed_staircase``, and a
smoke run of each script's ``main`` at N = 600 (auto only, no README, JSON to a tmp path)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.accuracy import examples, fixed_staircase
from bench.accuracy.examples import (
    CASES,
    JS_CASE,
    MIX_X,
    MIX_Y,
    LinearThenAsinh,
    PixelTarget,
    sinh_warp,
)
from bench.accuracy.samplers import GeneralGaussian, StudentT, one_v_one_normal


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_pixel_target_closed_form_is_three_nats_and_matches_the_joint_covariance():
    target = PixelTarget()
    w = target.weights
    closed = 0.5 * np.linalg.slogdet(np.eye(2) + w.T @ w / target.noise**2)[1]
    assert closed == pytest.approx(3.0, abs=1e-9)
    assert target.mutual_information() == pytest.approx(3.0, abs=1e-9)
    # the Gaussian formula on the full joint covariance of [x (rotated), y (pixels)]
    joint = GeneralGaussian(target.joint_covariance(), dim_x=64)
    assert joint.mutual_information() == pytest.approx(3.0, abs=1e-6)
    r = target.rotation
    assert np.allclose(r @ r.T, np.eye(64), atol=1e-10)
    assert np.abs(r).max() < 0.9  # every coordinate of x mixes the directions


def test_pixel_target_samples_have_the_stated_covariance():
    target = PixelTarget()
    x, y = target.sample(20_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert x.shape == (20_000, 64) and y.shape == (20_000, 2)
    assert y.mean(0).numpy() == pytest.approx([100.0, 100.0], abs=1.0)
    assert y.std(0).numpy() == pytest.approx([30.0, 30.0], rel=0.03)
    empirical = np.corrcoef(torch.cat([x, y], 1).numpy().T)
    cov = target.joint_covariance()
    sd = np.sqrt(np.diag(cov))
    assert np.abs(empirical - cov / np.outer(sd, sd)).max() < 0.05


@pytest.mark.parametrize(("key", "truth"), [("a", 1.0), ("c", 1.5), ("d", 8.0)])
def test_gaussian_cases_carry_the_bivariate_normal_truth(key, truth):
    sampler = CASES[key].build()
    assert sampler.mutual_information() == pytest.approx(truth, abs=1e-12)
    if key in ("a", "c"):  # the base is a bivariate normal: -1/2 log(1 - rho^2)
        rho = sampler.base.rho
        assert -0.5 * math.log(1 - rho**2) == pytest.approx(truth, abs=1e-12)
        assert one_v_one_normal(rho).mutual_information() == pytest.approx(truth, abs=1e-12)


def test_warp_is_strictly_increasing():
    t = torch.linspace(-8, 8, 10_001, dtype=torch.float64, requires_grad=True)
    out = sinh_warp(t)
    assert (out.diff() > 0).all()
    (grad,) = torch.autograd.grad(out.sum(), t)
    assert grad.min() >= 2.0 - 1e-12


def test_student_cases_keep_the_student_truth():
    e = CASES["e"].build()
    assert e.mutual_information() == pytest.approx(StudentT(2, 2, dof=1).mutual_information())
    assert e.mutual_information() == pytest.approx(0.4319, abs=5e-5)  # BMI's published value
    for matrix in (MIX_X, MIX_Y):
        assert abs(np.linalg.det(np.array(matrix))) > 1.0
        t = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        back = torch.linalg.solve(torch.tensor(matrix, dtype=torch.float64),
                                  torch.sinh(LinearThenAsinh(matrix)(t)).T).T  # fmt: skip
        assert torch.allclose(back, t, atol=1e-9)  # injective: the MI does not change
    assert JS_CASE.build().mutual_information() == pytest.approx(0.4482, abs=5e-5)


def test_fixed_staircase_levels_hold_their_truth():
    x, y, truth = fixed_staircase.level_data(50, 20, 6.0, seed=0)
    assert x.shape == y.shape == (50, 20)
    assert truth == pytest.approx(6.0, abs=1e-12)
    again, _, _ = fixed_staircase.level_data(50, 20, 6.0, seed=0)
    assert torch.equal(x, again)  # one fixed data set a level
    assert fixed_staircase.tolerance(2.0) == 0.25
    assert fixed_staircase.tolerance(10.0) == pytest.approx(0.3)


def _no_readme(*args, **kwargs):
    raise AssertionError("--no-readme must not touch bench/README.md")


def test_fixed_staircase_main_smoke(tmp_path: Path, monkeypatch, restore_threads):
    monkeypatch.setattr(fixed_staircase, "write_readme_block", _no_readme)
    out = tmp_path / "fixed.json"
    argv = ["--n", "600", "--levels", "2", "--estimators", "auto", "--threads", "1"]
    assert fixed_staircase.main([*argv, "--no-readme", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["estimator"] == "auto" and row["level"] == 2.0 and row["n"] == 600
    assert math.isfinite(row["estimate"]) and not row["failed"]
    assert report["checks"][0]["criterion"].startswith("auto within")


def test_examples_main_smoke(tmp_path: Path, monkeypatch, restore_threads):
    monkeypatch.setattr(examples, "write_readme_block", _no_readme)
    out = tmp_path / "examples.json"
    argv = ["--n", "600", "--n-large", "600", "--seeds", "1", "--estimators", "auto"]
    assert examples.main([*argv, "--threads", "1", "--no-readme", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {row["case"]: row for row in report["rows"]}
    assert sorted(rows) == ["a", "b", "c", "d", "e", "f"]
    assert rows["f"]["estimator"] == "js"
    assert all(rows[k]["estimator"] == "auto" and not rows[k]["failed"] for k in "abcde")
    assert rows["b"]["dim_x"] == 64 and rows["b"]["true"] == pytest.approx(3.0)
    assert report["timing"]["max_s"] > 0
