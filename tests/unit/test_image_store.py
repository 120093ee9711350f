"""Tests for bench.celeba_like (drawn faces as a CelebA folder) and mist_core.data.store
(decoded images on disk), on small generated folders in ``tmp_path``."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

import mist_core.data.store as store_module
from bench.celeba_like import CELEBA_SPLITS, split_counts, write_celeba_like
from mist_core.data.celeba import GENERATED_MARKER, CelebALandmarks, CelebAMissingError
from mist_core.data.images import resize_images, to_uint8
from mist_core.data.landmarks import LANDMARKS
from mist_core.data.stopping import PreparationStopped
from mist_core.data.store import StoreConfig, StoredImages, image_files, open_store, store_key
from mist_core.data.synthetic_faces import SyntheticFaces, face_landmarks

N, SEED = 30, 3
SIZE = (40, 32)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 30-face CelebA-format folder (written once for the module; read-only in tests)."""
    return write_celeba_like(tmp_path_factory.mktemp("celeba_like"), N, seed=SEED, workers=1)


def _config(tmp_path: Path, **kwargs: object) -> StoreConfig:
    return StoreConfig(SIZE, cache_dir=tmp_path / "cache", **kwargs)  # type: ignore[arg-type]


def _complete_stores(cache: Path) -> list[Path]:
    return [p for p in cache.iterdir() if p.is_dir() and (p / "meta.json").is_file()]


# --------------------------------------------------------------------------------------------
# bench.celeba_like
# --------------------------------------------------------------------------------------------


def test_split_counts_follow_celeba() -> None:
    assert split_counts(sum(CELEBA_SPLITS)) == CELEBA_SPLITS
    assert split_counts(N) == (24, 3, 3)
    for n in range(5, 60):
        counts = split_counts(n)
        assert sum(counts) == n and all(c == 0 or c >= 2 for c in counts)


def test_generated_folder_loads_for_every_split(
    generated: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mist_core.data.celeba"):
        datasets = {s: CelebALandmarks(generated, split=s) for s in ("train", "valid", "test")}
    assert "generated folder" in caplog.text
    assert [len(d) for d in datasets.values()] == list(split_counts(N))
    assert all(d.generated for d in datasets.values())
    every = CelebALandmarks(generated, split="all")
    # contiguous: train first, then valid, then test
    assert sum((d.filenames for d in datasets.values()), []) == every.filenames
    assert every.filenames == [f"{i:06d}.jpg" for i in range(1, N + 1)]
    faces = SyntheticFaces(N, seed=SEED)
    drawn = torch.tensor(  # exactly where render_face puts them: [N, 5, 2]
        np.array([[face_landmarks(faces.params(i))[k] for k in LANDMARKS] for i in range(N)]),
        dtype=torch.float32,
    )
    assert torch.allclose(torch.stack([faces[7][k] for k in LANDMARKS]), drawn[7])
    assert (every.landmarks - drawn).abs().max() <= 0.5
    item = every[7]
    assert item["image"].shape == (3, 218, 178)
    # JPEG at quality 90: close to the drawn pixels on average
    assert (item["image"] - faces[7]["image"]).abs().mean() < 0.03
    marker = (generated / "celeba" / GENERATED_MARKER).read_text()
    assert f"n={N}" in marker and f"seed={SEED}" in marker


def test_real_folder_is_still_md5_checked(generated: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(generated / "celeba", copy / "celeba")
    (copy / "celeba" / GENERATED_MARKER).unlink()
    with pytest.raises(CelebAMissingError, match="checksums"):
        CelebALandmarks(copy, split="train")


def test_writing_is_idempotent_and_resumes(tmp_path: Path, generated: Path) -> None:
    root = tmp_path / "partial"
    base = root / "celeba"
    import shutil

    shutil.copytree(generated / "celeba", base)
    (base / GENERATED_MARKER).unlink()  # as if interrupted after the images ...
    (base / ".celeba_like.json").write_text(
        json.dumps({"n": N, "seed": SEED, "quality": 90, "size": [218, 178]})
    )
    for name in ("000004.jpg", "000020.jpg"):  # ... with two images not written yet
        (base / "img_align_celeba" / name).unlink()
    kept = (base / "img_align_celeba" / "000001.jpg").stat().st_mtime_ns
    calls: list[tuple[int, int]] = []
    write_celeba_like(root, N, seed=SEED, workers=1, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (N - 2, N) and calls[-1] == (N, N)
    assert (base / "img_align_celeba" / "000001.jpg").stat().st_mtime_ns == kept
    for name in ("000004.jpg", "000020.jpg", "list_landmarks_align_celeba.txt"):
        src = generated / "celeba" / name if name.endswith(".txt") else None
        path = base / ("img_align_celeba" if src is None else "") / name
        ref = generated / "celeba" / ("img_align_celeba" if src is None else "") / name
        assert path.read_bytes() == ref.read_bytes()
    assert (base / GENERATED_MARKER).is_file() and not (base / ".celeba_like.json").exists()
    write_celeba_like(root, N, seed=SEED, workers=1)  # complete: nothing to do
    with pytest.raises(ValueError, match="written with"):
        write_celeba_like(root, N, seed=SEED + 1, workers=1)


# --------------------------------------------------------------------------------------------
# mist_core.data.store
# --------------------------------------------------------------------------------------------


def test_store_matches_preloaded_decoding(generated: Path, tmp_path: Path) -> None:
    dataset = CelebALandmarks(generated, split="all")
    progress: list[tuple[int, int]] = []
    store = open_store(
        dataset,
        _config(tmp_path, chunk_files=8, workers=2),
        progress=lambda d, t: progress.append((d, t)),
    )
    assert isinstance(store, StoredImages) and len(store) == N
    assert progress[0] == (0, N) and progress[-1] == (N, N)
    assert store.images.shape == (N, 3, *SIZE) and store.images.dtype == np.uint8
    # _Preloaded's way: decoded float items, resized in a batch, then to float again
    loaded = next(iter(DataLoader(dataset, batch_size=N)))
    expected = to_uint8(resize_images(loaded["image"], SIZE)).float().div(255.0)
    for i in (0, 5, N - 1):
        item = store[i]
        assert set(item) == {"image", *LANDMARKS}
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, *SIZE)
        assert (item["image"] - expected[i]).abs().max() <= 0.5 / 255
        for name in LANDMARKS:
            assert torch.equal(item[name], loaded[name][i])
    images, landmarks = store.batch([7, 2, 7, -1])
    assert images.dtype == torch.uint8 and images.shape == (4, 3, *SIZE)
    assert torch.equal(images[0], images[2])
    assert torch.equal(images[1].float().div(255.0), store[2]["image"])
    assert torch.equal(images[3], store.batch([N - 1])[0][0])
    assert torch.equal(landmarks, dataset.landmarks[[7, 2, 7, N - 1]])
    with pytest.raises(IndexError):
        store.batch([N])


def test_store_without_workers_is_identical(generated: Path, tmp_path: Path) -> None:
    dataset = CelebALandmarks(generated, split="valid")
    a = open_store(dataset, _config(tmp_path / "a", workers=1))
    b = open_store(dataset, _config(tmp_path / "b", chunk_files=1, workers=2))
    assert np.array_equal(a.images, b.images) and torch.equal(a.landmarks, b.landmarks)


def test_key_follows_size_files_and_split(generated: Path) -> None:
    train = CelebALandmarks(generated, split="train")
    files = image_files(train)
    key = store_key(files, SIZE)
    assert store_key(image_files(train), SIZE) == key
    assert store_key(files, (40, 33)) != key
    assert store_key(image_files(CelebALandmarks(generated, split="valid")), SIZE) != key
    subset = image_files(Subset(train, [0, 2, 5]))
    assert subset.names == tuple(train.filenames[i] for i in (0, 2, 5))
    assert store_key(subset, SIZE) != key
    assert store_key(image_files(Subset(train, [0, 2, 6])), SIZE) != store_key(subset, SIZE)
    with pytest.raises(TypeError):
        image_files(SyntheticFaces(3))


def test_second_open_reuses_without_decoding(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = CelebALandmarks(generated, split="valid")
    config = _config(tmp_path, workers=1)
    first = open_store(dataset, config)
    mtime = (first.folder / "images.npy").stat().st_mtime_ns

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(store_module, "_decode_into", no_decoding)
    progress: list[tuple[int, int]] = []
    second = open_store(
        dataset,
        StoreConfig(SIZE, cache_dir=tmp_path / "cache", verify=True),
        progress=lambda *a: progress.append(a),
    )
    assert second.folder == first.folder and progress == [(len(dataset), len(dataset))]
    assert (second.folder / "images.npy").stat().st_mtime_ns == mtime
    assert np.array_equal(first.images, second.images)


def test_env_names_the_default_cache(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIST_IMAGE_CACHE", str(tmp_path / "env-cache"))
    store = open_store(CelebALandmarks(generated, split="test"), StoreConfig(SIZE, workers=1))
    assert store.folder.parent == tmp_path / "env-cache"


def test_stopped_build_leaves_nothing_complete(generated: Path, tmp_path: Path) -> None:
    dataset = CelebALandmarks(generated, split="all")
    config = _config(tmp_path, chunk_files=4, workers=1)
    stop = threading.Event()

    def progress(done: int, total: int) -> None:
        if done >= 8:
            stop.set()

    with pytest.raises(PreparationStopped):
        open_store(dataset, config, progress=progress, stop_event=stop)
    cache = tmp_path / "cache"
    assert _complete_stores(cache) == []
    assert not [p for p in cache.iterdir() if p.is_dir()]  # the temporary folder is gone
    store = open_store(dataset, config)  # a rebuild works
    assert len(store) == N and store.images[N - 1].any()


def test_stopped_build_with_workers(generated: Path, tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(PreparationStopped):
        open_store(
            CelebALandmarks(generated, split="all"),
            _config(tmp_path, chunk_files=2, workers=2),
            stop_event=stop,
        )
    assert _complete_stores(tmp_path / "cache") == []


def test_leftover_temporary_folder_is_cleaned(generated: Path, tmp_path: Path) -> None:
    dataset = CelebALandmarks(generated, split="valid")
    config = _config(tmp_path, workers=1)
    key = store_key(image_files(dataset), SIZE)
    leftover = tmp_path / "cache" / f".{key}.99999.dead.tmp"
    leftover.mkdir(parents=True)
    (leftover / "images.npy").write_bytes(b"partial")
    store = open_store(dataset, config)
    assert not leftover.exists() and store.folder.name == key


@pytest.mark.parametrize("damage", ["truncate", "no_meta", "bad_meta", "flip_byte"])
def test_damaged_store_is_rebuilt(
    generated: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = CelebALandmarks(generated, split="all")
    first = open_store(dataset, _config(tmp_path, workers=1))
    reference = np.array(first.images)
    folder = first.folder
    del first
    images = folder / "images.npy"
    if damage == "truncate":
        os.truncate(images, images.stat().st_size - 100)
    elif damage == "no_meta":
        (folder / "meta.json").unlink()
    elif damage == "bad_meta":
        (folder / "meta.json").write_text("{not json")
    else:
        data = bytearray(images.read_bytes())
        data[-5] ^= 0xFF
        images.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="mist_core.data.store"):
        again = open_store(dataset, _config(tmp_path, workers=1, verify=True))
    assert "rebuilding" in caplog.text
    assert again.folder == folder and np.array_equal(np.array(again.images), reference)


def test_pickles_without_the_map(generated: Path, tmp_path: Path) -> None:
    import pickle

    store = open_store(CelebALandmarks(generated, split="test"), _config(tmp_path, workers=1))
    _ = store.images
    copy = pickle.loads(pickle.dumps(store))
    assert copy._images is None and torch.equal(copy[1]["image"], store[1]["image"])


def test_missing_image_is_named(generated: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "root"
    shutil.copytree(generated / "celeba", root / "celeba")
    (root / "celeba" / "img_align_celeba" / "000026.jpg").unlink()  # in valid
    with pytest.raises(FileNotFoundError, match="000026.jpg"):
        open_store(CelebALandmarks(root, split="valid"), _config(tmp_path, workers=1))
    assert _complete_stores(tmp_path / "cache") == []


def test_bench_loader_runs(generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bench.loader import main

    threads = torch.get_num_threads()
    try:  # main measures on one thread
        args = [str(generated), "--epochs", "1", "--size", "40", "32", "--workers", "0"]
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "torchvision+PIL" in out and "store (uint8 memmap)" in out


# --------------------------------------------------------------------------------------------
# The experiment on a CelebA folder without preload: the store, built once, reused
# --------------------------------------------------------------------------------------------


def test_an_experiment_on_celeba_trains_from_the_store_and_a_second_run_reuses_it(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mist_core.experiment import LandmarkExperiment, preset

    monkeypatch.setenv("MIST_IMAGE_CACHE", str(tmp_path / "cache"))
    config = preset(
        "seed",
        celeba_root=str(generated),
        train_size=None,
        test_size=None,
        image_size=SIZE,
        encoders=("random_init", "trained"),
        batch_size=8,
        epochs=1,
        valid_fraction=0.0,
        device="cpu",
        num_workers=8,  # the seed preset's: no loader process is started for the store
    )
    experiment = LandmarkExperiment(config)
    data = experiment.datasets()
    assert isinstance(data["train"], StoredImages)
    assert experiment.loader("train").num_workers == 0
    train, test = CelebALandmarks(generated, "train"), CelebALandmarks(generated, "test")
    item = data["train"][1]
    assert item["image"].shape == (3, *SIZE) and item["image"].dtype == torch.float32
    assert torch.equal(item["nose"], train[1]["nose"])  # source pixels, as preloaded
    expected = to_uint8(resize_images(train[1]["image"].unsqueeze(0), SIZE))[0]
    assert torch.equal(to_uint8(item["image"]), expected)
    log = experiment.train()
    assert int(log.attrs["steps"]) == -(-len(train) // 8)
    assert len(experiment.evaluate()) == 2 * len(LANDMARKS)
    assert len(_complete_stores(tmp_path / "cache")) == 2  # the training and the test split

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(store_module, "_decode_into", no_decoding)
    again = LandmarkExperiment(config)
    assert len(again.datasets()["train"]) == len(train)
    assert len(again.loader("test").dataset) == len(test)
