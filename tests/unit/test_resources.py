"""Memory and time of a config before it starts (mist_core.resources): the estimate, the
check that refuses what does not fit, and the estimate against a real run's peak memory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mist_core import resources
from mist_core.data import synthetic_faces
from mist_core.experiment import preset
from mist_core.resources import (
    ResourceError,
    ResourceEstimate,
    available_memory_bytes,
    check_resources,
    estimate_resources,
)

REPO = Path(__file__).resolve().parents[2]
GB = 1e9


@pytest.fixture
def machine(monkeypatch):
    """Pretend this machine has ``machine(bytes)`` of memory available (and 2 cores)."""

    def set_available(available: int | None) -> None:
        monkeypatch.setattr(resources, "available_memory_bytes", lambda: available)

    monkeypatch.setattr(resources, "cpu_cores", lambda: 2)
    return set_available


def test_available_memory_is_what_linux_says():
    available = available_memory_bytes()
    if not Path("/proc/meminfo").exists():
        assert available is None
        return
    total = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    assert available is not None and 0 < available <= total


def test_the_demo_fits_and_the_message_says_so(machine):
    machine(int(18e9))
    estimate = check_resources(preset("demo-cpu"))
    assert isinstance(estimate, ResourceEstimate) and estimate.fits
    assert 0.3 * GB < estimate.memory_bytes < 2 * GB
    assert estimate.available_bytes == int(18e9)
    assert re.match(r"about \d\.\d GB of memory", estimate.message)
    assert "GB of memory (this machine has 18 GB available)" in estimate.message
    assert "roughly" in estimate.message and "minutes" in estimate.message
    assert 10 < estimate.seconds < 600


def test_images_are_counted_as_uint8_at_the_encoders_size():
    config = preset("demo-cpu", train_size=10_000, test_size=1_000, image_size=(64, 52))
    parts = estimate_resources(config).parts
    assert parts["images"] == 11_000 * 3 * 64 * 52  # one byte per value
    assert parts["feature tables"] == 11_000 * 512 * 4  # one frozen encoder (random_init)
    off = estimate_resources(config.replace(preload=False)).parts
    assert "images" not in off and "loading" in off
    no_cache = estimate_resources(config.replace(feature_cache=False)).parts
    assert "feature tables" not in no_cache
    assert synthetic_faces.CHUNK_FACES == resources.CHUNK_FACES


def test_memory_grows_with_images_and_their_size():
    small = estimate_resources(preset("demo-cpu", train_size=10_000)).memory_bytes
    more = estimate_resources(preset("demo-cpu", train_size=100_000)).memory_bytes
    bigger = estimate_resources(preset("demo-cpu", image_size=(218, 178))).memory_bytes
    assert more - small > 90_000 * 3 * 64 * 52  # at least the images themselves
    assert bigger > small


def test_a_million_faces_are_refused_with_what_would_fit(machine):
    machine(int(6.1e9))
    config = preset("demo-cpu", train_size=1_000_000)
    estimate = estimate_resources(config)
    assert not estimate.fits and estimate.memory_bytes > 10 * GB
    with pytest.raises(ResourceError) as error:
        check_resources(config)
    assert isinstance(error.value, ValueError)  # callers that catch ValueError see it too
    message = str(error.value)
    assert message.startswith("1,000,000 training faces at 64 x 52 need about ")
    assert "of memory; this machine has 6.1 GB available. Use at most ~" in message
    assert message.endswith("training faces, smaller images or preload off.")
    most = int(message.split("at most ~")[1].split()[0].replace(",", ""))
    assert 100_000 < most < 1_000_000
    # the advice is right: that many fit, 20% more do not
    assert estimate_resources(config.replace(train_size=most)).fits
    assert not estimate_resources(config.replace(train_size=int(most * 1.2))).fits


def test_too_big_a_batch_is_refused_with_the_batch_size_advice(machine):
    machine(int(6e9))
    config = preset("demo-cpu", train_size=1000, batch_size=4096, image_size=(218, 178))
    with pytest.raises(ResourceError, match=r"Use a smaller batch size or smaller images\.$"):
        check_resources(config)


def test_unknown_memory_is_not_refused(machine):
    machine(None)
    estimate = check_resources(preset("demo-cpu", train_size=1_000_000))
    assert estimate.fits and estimate.available_bytes is None
    assert "this machine has" not in estimate.message


def test_what_does_not_fit_on_this_machine_is_refused_for_real():
    """No pretending: 1,000,000 faces at 218 x 178 are 116 GB as uint8 alone."""
    config = preset("demo-cpu", train_size=1_000_000, image_size=(218, 178))
    available = available_memory_bytes()
    if available is None or available > 100e9:
        pytest.skip("this machine's memory is unknown or very large")
    with pytest.raises(ResourceError, match="1,000,000 training faces at 218 x 178 need about"):
        check_resources(config)


def test_celeba_whole_split_is_counted():
    config = preset("seed", device="cpu")  # train_size None: CelebA's 162,770 images
    estimate = estimate_resources(config)
    assert "images" not in estimate.parts  # the seed preset streams (preload off)
    preloaded = estimate_resources(config.replace(preload=True))
    assert preloaded.parts["images"] == (162_770 + 1000) * 3 * 218 * 178


@pytest.mark.slow
@pytest.mark.parametrize(
    "changes",
    [
        {"train_size": 600, "test_size": 200, "image_size": [64, 52], "epochs": 1},
        {
            "train_size": 300,
            "test_size": 100,
            "image_size": [128, 104],
            "batch_size": 32,
            "epochs": 1,
        },
    ],  # fmt: skip
)
def test_the_estimate_is_above_a_real_runs_peak_memory(changes):
    """Prepare, train and evaluate in a fresh process; its peak memory above the idle
    process (torch and mist_core imported) stays under the estimate, and the estimate is not
    wildly above it either."""
    script = f"""
import gc, json, os, threading, time
from mist_core.experiment import LandmarkExperiment, preset
from mist_core.resources import estimate_resources
config = preset("demo-cpu", **json.loads({json.dumps(json.dumps(changes))}))
estimate = estimate_resources(config).memory_bytes
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
gc.collect()
idle, peak, done = rss(), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
experiment = LandmarkExperiment(config)
experiment.prepare()
experiment.train()
experiment.evaluate()
done.set()
# the peak of this process image (ru_maxrss would include the parent's, from before exec)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
peak = max(peak[0], int(hwm.split()[1]) * 1024)
print(json.dumps({{"used": peak - idle, "estimate": estimate}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    used, estimate = figures["used"], figures["estimate"]
    print(f"{changes}: peak {used / 1e6:.0f} MB above idle, estimate {estimate / 1e6:.0f} MB")
    assert used < estimate, figures
    assert estimate < 3 * used + 300e6, figures
