"""Fixtures shared by the unit and fault tests."""

from __future__ import annotations

import os
import threading
import time

import pytest


@pytest.fixture(scope="session", autouse=True)
def _image_store_in_a_temporary_folder(tmp_path_factory):
    """No test writes decoded CelebA images to ~/.cache/mist/images (mist_core.data.store)."""
    saved = os.environ.get("MIST_IMAGE_CACHE")
    os.environ["MIST_IMAGE_CACHE"] = str(tmp_path_factory.mktemp("image-store"))
    yield
    if saved is None:
        os.environ.pop("MIST_IMAGE_CACHE", None)
    else:
        os.environ["MIST_IMAGE_CACHE"] = saved


@pytest.fixture(autouse=True)
def _image_cache_of_its_own(tmp_path_factory, monkeypatch):
    """Each test starts with an empty image cache (decoded CelebA images and drawn faces,
    mist_core.data.store and mist_core.data.face_cache): what one test drew never spares
    another the drawing its stop or timing checks rely on."""
    monkeypatch.setenv("MIST_IMAGE_CACHE", str(tmp_path_factory.mktemp("image-cache")))


@pytest.fixture()
def blocking_train(monkeypatch):
    """Jobs whose training is a wait (for ``release`` or a stop): the queue's rules without
    the cost of a training. Yields the ``release`` event; ``release.started`` lists the ids
    of the jobs in the order they started."""
    from mist_core.jobs import Job
    from mist_core.runs import RunStatus

    release = threading.Event()
    release.started = []

    def train(self):
        release.started.append(self.id)
        self._set(RunStatus.RUNNING, "training")
        while not release.is_set() and not self._stop.is_set():
            time.sleep(0.005)
        self._set(RunStatus.STOPPED if self._stop.is_set() else RunStatus.FINISHED, "done")

    monkeypatch.setattr(Job, "_train", train)
    yield release
    release.set()
