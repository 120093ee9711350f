"""Drawn faces kept on disk (``mist_core.data.face_cache``): a second run with the same faces
loads them instead of drawing; other faces, sizes or drawing code are other files; a torn
file is ignored with a warning."""

from __future__ import annotations

import logging

import pytest
import torch

from mist_core.data import face_cache
from mist_core.data.face_cache import drawn_key, load_drawn, save_drawn
from mist_core.data.synthetic_faces import SyntheticFaces
from mist_core.experiment import LandmarkExperiment, preset


def _config():
    return preset("demo-cpu", train_size=12, test_size=4, image_size=(32, 32))


def test_a_second_experiment_loads_the_faces_the_first_drew(monkeypatch):
    first = LandmarkExperiment(_config()).datasets()
    first_test = first["test"].dataset()  # made on first use, and kept too

    def no_drawing(*args, **kwargs):
        raise AssertionError("the faces were drawn again")

    monkeypatch.setattr(SyntheticFaces, "render_chunks", no_drawing)
    second = LandmarkExperiment(_config()).datasets()
    assert torch.equal(second["train"].images, first["train"].images)
    for name, value in first["train"].targets.items():
        assert torch.equal(second["train"].targets[name], value)
    assert torch.equal(second["test"].dataset().images, first_test.images)
    # another seed is other faces: drawn (and here refused)
    with pytest.raises(AssertionError, match="drawn again"):
        LandmarkExperiment(_config().replace(seed=1)).datasets()


def test_the_key_follows_the_faces_the_size_and_the_drawing_code(monkeypatch):
    faces = SyntheticFaces(5, seed=0)
    key = drawn_key(faces, (32, 32))
    assert drawn_key(SyntheticFaces(5, seed=0), (32, 32)) == key
    assert drawn_key(SyntheticFaces(6, seed=0), (32, 32)) != key
    assert drawn_key(SyntheticFaces(5, seed=1), (32, 32)) != key
    assert drawn_key(faces, (32, 40)) != key
    monkeypatch.setattr(face_cache, "drawing_code_hash", lambda: "another drawing")
    assert drawn_key(faces, (32, 32)) != key


def test_a_torn_or_mismatched_file_is_ignored(caplog):
    faces = SyntheticFaces(3, seed=0)
    images = torch.zeros((3, 3, 32, 32), dtype=torch.uint8)
    targets = {"nose": torch.zeros((3, 2))}
    assert load_drawn(faces, (32, 32)) is None
    save_drawn(faces, (32, 32), images, targets)
    loaded = load_drawn(faces, (32, 32))
    assert loaded is not None and torch.equal(loaded[0], images)
    path = face_cache._path(faces, (32, 32))
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="mist_core.data.face_cache"):
        assert load_drawn(faces, (32, 32)) is None
    assert "drawing them again" in caplog.text
    save_drawn(faces, (32, 32), images[:2], targets)  # 2 faces saved under 3's key
    assert load_drawn(faces, (32, 32)) is None


def test_a_second_experiment_reads_the_frozen_features_from_disk(monkeypatch):
    """The frozen encoder's features of the same faces are kept on disk too; a change to the
    drawing code is another dataset for them."""
    first = LandmarkExperiment(_config())
    first.prepare(("train",))
    assert first.cache is not None and first.cache.misses == 1
    second = LandmarkExperiment(_config())
    second.prepare(("train",))
    assert second.cache is not first.cache
    assert (second.cache.hits, second.cache.misses) == (1, 0)
    table = second._features("train")["random_init"]
    assert torch.equal(table, first._features("train")["random_init"])
    monkeypatch.setattr(face_cache, "drawing_code_hash", lambda: "another drawing")
    import mist_core.experiment.data as experiment_data

    monkeypatch.setattr(experiment_data, "drawing_code_hash", lambda: "another drawing")
    third = LandmarkExperiment(_config())
    third.prepare(("train",))
    assert third.cache.misses == 1
