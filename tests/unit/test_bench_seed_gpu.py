"""``bench.seed_gpu``: the projection's arithmetic, the folder size it writes, and a tiny CPU
run of ``main`` (drawn faces written to tmp, image store in tmp, stand-in weights)."""

from __future__ import annotations

import doctest
import math
import os
import re

import pytest
import torch

from bench import seed_gpu
from bench.celeba_like import split_counts
from bench.seed_gpu import FULL_EPOCHS, FULL_STORED, FULL_TEST, FULL_TRAIN, project


def test_projection_scales_each_term_and_skips_the_first_epoch():
    p = project(
        [100.0, 4.0, 6.0], 1000, tables_s=2.0, eval_s=1.0, n_test=100, store_s=3.0, n_stored=1100
    )
    assert p.per_image_s == pytest.approx(5.0 / 1000)
    assert p.epochs_s == pytest.approx(5.0 / 1000 * FULL_TRAIN * FULL_EPOCHS)
    assert p.tables_s == pytest.approx(2.0 / 1000 * FULL_TRAIN)
    assert p.eval_s == pytest.approx(1.0 / 100 * FULL_TEST)
    assert p.store_s == pytest.approx(3.0 / 1100 * FULL_STORED)
    assert p.total_s == pytest.approx(p.epochs_s + p.tables_s + p.eval_s + p.store_s)
    assert "2..E" in p.formula and "162,770" in p.formula


def test_projection_with_one_epoch_uses_it_and_a_reused_store_costs_nothing():
    p = project([8.0], 100, tables_s=0.0, eval_s=1.0, n_test=10, store_s=None, n_stored=110)
    assert p.per_image_s == pytest.approx(0.08)
    assert p.store_s == 0.0
    with pytest.raises(ValueError):
        project([], 100, tables_s=0.0, eval_s=1.0, n_test=10, store_s=None, n_stored=110)


def test_projection_doctest():
    failures, _ = doctest.testmod(seed_gpu, verbose=False)
    assert failures == 0


@pytest.mark.parametrize("n_train", [2, 16, 64, 1000, 16_070])
def test_folder_size_is_the_fewest_faces_with_that_train_split(n_train):
    n = seed_gpu.images_for_train_split(n_train)
    assert split_counts(n)[0] >= n_train
    assert n == 5 or split_counts(n - 1)[0] < n_train


@pytest.mark.slow
def test_tiny_cpu_run_prints_epochs_projection_and_encoders(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MIST_IMAGE_CACHE", str(tmp_path / "store"))
    threads, torch_home = torch.get_num_threads(), os.environ.get("TORCH_HOME")
    try:
        code = seed_gpu.main(
            [str(tmp_path / "faces"), "--device", "cpu", "--images", "16", "--epochs", "2",
             "--batch", "8", "--size", "64", "52", "--threads", "2"]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^epoch 1: [0-9.]+ s, [0-9.]+ images/s", out, re.M)
    assert re.search(r"^epoch 2: [0-9.]+ s, [0-9.]+ images/s", out, re.M)
    assert re.search(r"^encoders random_init, pretrained, finetuned \(frozen: ", out, re.M)
    assert "built in" in out  # a fresh store: its build is measured
    total = re.search(r"= ([0-9.eE+]+) s \(", out)
    assert total is not None, out
    assert math.isfinite(float(total.group(1))) and float(total.group(1)) > 0
    assert os.environ.get("TORCH_HOME") == torch_home  # the stand-in hub folder is undone


def test_gpu_sampler_summary_keeps_the_training_window():
    sampler = seed_gpu.GpuSampler(torch.device("cuda", 0))  # no GPU here: nothing sampled
    if not sampler.source:
        assert "not sampled" in sampler.summary(0.0, 1.0)
    sampler.source = "test"
    sampler.samples = [(0.5, 10.0, 100.0), (1.0, 80.0, 900.0), (2.0, 90.0, math.nan)]
    sampler.samples.append((9.0, 0.0, 5000.0))  # after training: left out
    text = sampler.summary(1.0, 3.0)
    assert "mean 85%" in text and "median 85%" in text and "900 MiB" in text
    assert "no samples" in sampler.summary(5.0, 6.0)
