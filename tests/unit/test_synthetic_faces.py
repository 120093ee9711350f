"""Tests for the procedurally drawn face dataset (mist_core.data.synthetic_faces)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mist_core.data import LANDMARKS, SyntheticFaces
from mist_core.data.synthetic_faces import FaceParams, face_landmarks, render_face

REPO = Path(__file__).resolve().parents[2]
HEIGHT, WIDTH = 218, 178
CELEBA_MEANS = {  # aligned CelebA, (x, y) in pixels of a 178 x 218 image
    "left_eye": (69.5, 111.5),
    "right_eye": (107.5, 111.5),
    "nose": (88.5, 134.5),
    "left_mouth": (72.5, 152.5),
    "right_mouth": (104.5, 152.5),
}
N_COLOUR_ITEMS = 60


# --------------------------------------------------------------------------------------------
# Helpers: image measurements (images are float [H, W, 3] in [0, 1])
# --------------------------------------------------------------------------------------------


def _as_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255.0


def _patch(image: np.ndarray, x: float, y: float, radius: int) -> np.ndarray:
    """Pixels of the (2 radius + 1)^2 square centred on the pixel containing (x, y): [k, 3]."""
    col, row = int(np.floor(x)), int(np.floor(y))
    return image[row - radius : row + radius + 1, col - radius : col + radius + 1].reshape(-1, 3)


def _intensity(colours: np.ndarray) -> np.ndarray:
    return colours.mean(axis=-1)


def _redness(colours: np.ndarray) -> np.ndarray:
    return colours[..., 0] - 0.5 * (colours[..., 1] + colours[..., 2])


def _cheek(image: np.ndarray, landmarks: dict[str, np.ndarray], side: str) -> np.ndarray:
    """Mean colour of a 5 x 5 skin patch at the nose tip's height, 6 px outside the eye."""
    eye = landmarks[f"{side}_eye"]
    outward = -6.0 if side == "left" else 6.0
    return _patch(image, eye[0] + outward, landmarks["nose"][1], 2).mean(axis=0)


@pytest.fixture(scope="module")
def rendered() -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    dataset = SyntheticFaces(N_COLOUR_ITEMS, seed=11)
    return [(_as_float(image), lm) for image, lm in map(dataset.render, range(len(dataset)))]


# --------------------------------------------------------------------------------------------
# Items: shapes, dtypes, ranges, indexing, validation
# --------------------------------------------------------------------------------------------


def test_item_shapes_dtypes_and_ranges():
    dataset = SyntheticFaces(6, seed=0)
    for i in range(len(dataset)):
        item = dataset[i]
        assert set(item) == {"image", *LANDMARKS}
        image = item["image"]
        assert image.shape == (3, HEIGHT, WIDTH) and image.dtype == torch.float32
        assert image.is_contiguous()
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert float(image.std()) > 0.05  # not blank
        for name in LANDMARKS:
            point = item[name]
            assert point.shape == (2,) and point.dtype == torch.float32
            assert 0.0 <= float(point[0]) < WIDTH and 0.0 <= float(point[1]) < HEIGHT
        # Image-left eye has the smaller x; the mouth is below the nose, below the eyes.
        assert item["left_eye"][0] < item["right_eye"][0]
        assert item["left_mouth"][0] < item["right_mouth"][0]
        assert item["left_eye"][1] < item["nose"][1] < item["left_mouth"][1]


def test_len_and_indexing_like_a_list():
    dataset = SyntheticFaces(5, seed=2)
    assert len(dataset) == 5
    assert torch.equal(dataset[-1]["image"], dataset[4]["image"])
    assert torch.equal(dataset[-5]["nose"], dataset[0]["nose"])
    for bad in (5, 6, -6, 100):
        with pytest.raises(IndexError):
            dataset[bad]
    with pytest.raises(TypeError):
        dataset[1.0]
    assert len(SyntheticFaces(0)) == 0
    with pytest.raises(IndexError):
        SyntheticFaces(0)[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": -1},
        {"n": 2.5},
        {"n": 3, "seed": -1},
        {"n": 3, "seed": 1.5},
        {"n": 3, "image_size": (10, 10)},
        {"n": 3, "image_size": (218, 5000)},
        {"n": 3, "image_size": (218,)},
        {"n": 3, "image_size": (218.0, 178)},
        {"n": 3, "image_size": "218x178"},
        {"n": 3, "image_size": None},
    ],
)
def test_invalid_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        SyntheticFaces(**kwargs)


def test_other_image_size_scales_geometry_proportionally():
    small = SyntheticFaces(4, seed=5, image_size=(109, 89))
    full = SyntheticFaces(4, seed=5)
    for i in range(4):
        item, reference = small[i], full[i]
        assert item["image"].shape == (3, 109, 89)
        for name in LANDMARKS:
            expected = reference[name] * torch.tensor([89 / 178, 109 / 218])
            torch.testing.assert_close(item[name], expected, atol=1e-4, rtol=0)
    wide = SyntheticFaces(1, seed=5, image_size=(218, 356))[0]
    assert wide["image"].shape == (3, 218, 356)
    torch.testing.assert_close(wide["nose"][0], full[0]["nose"][0] * 2, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------


def _equal_items(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_and_index_give_identical_items_in_any_order():
    first = SyntheticFaces(8, seed=3)
    second = SyntheticFaces(8, seed=3)
    forward = [first[i] for i in range(8)]
    backward = {i: second[i] for i in reversed(range(8))}
    assert all(_equal_items(forward[i], backward[i]) for i in range(8))
    assert _equal_items(first[5], first[5])  # repeated access
    # The item does not depend on the dataset's length either.
    assert _equal_items(SyntheticFaces(100, seed=3)[5], forward[5])


def test_items_do_not_touch_global_random_state():
    torch.manual_seed(0)
    np.random.seed(0)
    expected_torch, expected_numpy = torch.rand(3), np.random.rand(3)
    torch.manual_seed(0)
    np.random.seed(0)
    SyntheticFaces(2, seed=1)[1]
    assert torch.equal(torch.rand(3), expected_torch)
    assert np.array_equal(np.random.rand(3), expected_numpy)


def test_different_seeds_and_indices_differ():
    a, b = SyntheticFaces(4, seed=0), SyntheticFaces(4, seed=1)
    for i in range(4):
        assert not torch.equal(a[i]["image"], b[i]["image"])
        assert not torch.equal(a[i]["nose"], b[i]["nose"])
    assert not torch.equal(a[0]["image"], a[1]["image"])


@pytest.mark.slow
def test_identical_in_a_fresh_process():
    code = (
        "import hashlib; from mist_core.data import SyntheticFaces; "
        "d = SyntheticFaces(3, seed=9); item = d[2]; "
        "print(hashlib.sha256(item['image'].numpy().tobytes()"
        " + item['nose'].numpy().tobytes()).hexdigest())"
    )
    env = {"PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    import hashlib

    item = SyntheticFaces(3, seed=9)[2]
    here = hashlib.sha256(item["image"].numpy().tobytes() + item["nose"].numpy().tobytes())
    assert out == here.hexdigest()


# --------------------------------------------------------------------------------------------
# Landmarks sit on the drawn features
# --------------------------------------------------------------------------------------------


def _plain_pupil_params(params: FaceParams) -> FaceParams:
    """Same face, but the pupil is the only dark thing within 2.4 px of the eye landmark.

    A light iris (its darker rim starting 2.7 px out), light and wide-open lids, no noise,
    flat light, no glint, no gaze (which would move the white and the lids relative to the
    iris), unit scale.
    """
    eyes = dataclasses.replace(
        params.eyes,
        gaze_x=0.0,
        gaze_y=0.0,
        catchlight=False,
        pupil_radius=1.6,
        iris_radius=3.9,
        iris_colour=(0.9, 0.9, 0.9),
        lash_colour=(0.9, 0.9, 0.9),
        half_height=4.0,
    )
    scene = dataclasses.replace(
        params.scene, noise_std=0.0, light_strength=0.0, ambient=1.0, colour_cast=(1, 1, 1)
    )
    pose = dataclasses.replace(params.pose, scale=1.0)
    return dataclasses.replace(params, pose=pose, eyes=eyes, scene=scene, glasses=None)


def test_pixel_centre_convention_pupil_centroid_is_the_landmark():
    """Pixel column j covers x in [j, j + 1): the pupil's centroid over pixel centres
    (j + 0.5, i + 0.5) must be the eye landmark, to well under the half-pixel that the other
    convention (centres at j) would give."""
    dataset = SyntheticFaces(10, seed=4)
    for i in range(len(dataset)):
        image, landmarks = render_face(_plain_pupil_params(dataset.params(i)))
        intensity = _intensity(_as_float(image))
        for name in ("left_eye", "right_eye"):
            x, y = landmarks[name]
            col, row = int(np.floor(x)), int(np.floor(y))
            rows, cols = np.mgrid[row - 4 : row + 5, col - 4 : col + 5]
            centres_x, centres_y = cols + 0.5, rows + 0.5
            near = np.hypot(centres_x - x, centres_y - y) < 2.4
            # Darkness relative to the light iris: proportional to the pupil's coverage.
            weights = np.clip(0.88 - intensity[rows, cols], 0.0, None) * near
            assert weights.sum() > 3.0
            centroid = [(weights * centres_x).sum(), (weights * centres_y).sum()]
            np.testing.assert_allclose(np.array(centroid) / weights.sum(), [x, y], atol=0.1)


def test_eye_landmarks_are_on_dark_pupils(rendered):
    for image, lm in rendered:
        for side in ("left", "right"):
            pupil = np.median(_intensity(_patch(image, *lm[f"{side}_eye"], 1)))
            skin = _intensity(_cheek(image, lm, side))
            assert pupil < 0.6 * skin, (side, pupil, skin)


def test_nose_landmark_is_the_lit_tip_above_nostril_shadow(rendered):
    for image, lm in rendered:
        x, y = lm["nose"]
        tip = np.median(_intensity(_patch(image, x, y, 1)))
        skin = 0.5 * (
            _intensity(_cheek(image, lm, "left")) + _intensity(_cheek(image, lm, "right"))
        )
        assert tip > 0.85 * skin, (tip, skin)
        # The darkest 3 x 3 mean just below the tip (nostrils, shadow) is clearly darker.
        intensity = _intensity(image)
        col, row = int(np.floor(x)), int(np.floor(y))
        below = intensity[row + 1 : row + 8, col - 8 : col + 9]
        local = np.lib.stride_tricks.sliding_window_view(below, (3, 3)).mean(axis=(-1, -2))
        assert local.min() < 0.75 * tip


def test_mouth_corners_are_lip_coloured(rendered):
    for image, lm in rendered:
        left, right = lm["left_mouth"], lm["right_mouth"]
        # Lip reference: the redder quarter of the pixels in the box between the corners.
        box = image[
            int(min(left[1], right[1])) - 3 : int(max(left[1], right[1])) + 6,
            int(left[0]) + 3 : int(right[0]) - 2,
        ].reshape(-1, 3)
        lips = box[_redness(box) >= np.quantile(_redness(box), 0.75)].mean(axis=0)
        for side, corner_point in (("left", left), ("right", right)):
            x, y = corner_point
            corner = np.stack([_patch(image, x + dx, y, 0)[0] for dx in (-1, 0, 1)]).mean(0)
            skin = _cheek(image, lm, side)
            assert _redness(corner) > _redness(skin), (side, corner, skin)
            # Closer in chromaticity (colour with brightness divided out) to lips than skin.
            hue = corner / corner.sum()
            assert np.linalg.norm(hue - lips / lips.sum()) < np.linalg.norm(
                hue - skin / skin.sum()
            )


def test_occluders_never_cover_landmarks():
    dataset = SyntheticFaces(400, seed=0)
    occluded = [i for i in range(len(dataset)) if dataset.params(i).occluder is not None][:8]
    assert len(occluded) == 8
    kinds = set()
    for i in occluded:
        params = dataset.params(i)
        kinds.add(params.occluder.kind)
        with_occluder, landmarks = render_face(params)
        without, _ = render_face(dataclasses.replace(params, occluder=None))
        changed = np.abs(with_occluder.astype(int) - without.astype(int)).max(axis=-1) > 0
        assert changed.sum() > 50  # the occluder is really drawn...
        rows, cols = np.nonzero(changed)
        centres = np.stack([cols + 0.5, rows + 0.5], axis=1)
        for point in landmarks.values():  # ...but nowhere near a landmark
            assert np.hypot(*(centres - point).T).min() > 5.0
    assert len(kinds) >= 2


def test_glasses_and_occluder_rates():
    dataset = SyntheticFaces(1500, seed=1)
    params = [dataset.params(i) for i in range(len(dataset))]
    glasses = np.mean([p.glasses is not None for p in params])
    occluders = np.mean([p.occluder is not None for p in params])
    assert 0.11 < glasses < 0.19
    assert 0.06 < occluders < 0.14


# --------------------------------------------------------------------------------------------
# Landmark statistics
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def landmark_table() -> tuple[dict[str, np.ndarray], np.ndarray]:
    dataset = SyntheticFaces(500, seed=7)
    params = [dataset.params(i) for i in range(len(dataset))]
    points = [face_landmarks(p) for p in params]
    table = {name: np.array([lm[name] for lm in points]) for name in LANDMARKS}
    yaw = np.array([p.pose.yaw for p in params])
    return table, yaw


def test_landmarks_from_params_equal_the_items():
    dataset = SyntheticFaces(5, seed=7)
    for i in range(5):
        item, expected = dataset[i], face_landmarks(dataset.params(i))
        for name in LANDMARKS:
            torch.testing.assert_close(
                item[name], torch.tensor(expected[name], dtype=torch.float32)
            )


def test_landmark_means_match_aligned_celeba(landmark_table):
    table, _ = landmark_table
    for name, mean in CELEBA_MEANS.items():
        np.testing.assert_allclose(table[name].mean(axis=0), mean, atol=3.0, err_msg=name)


def test_landmark_spreads_are_realistic(landmark_table):
    table, _ = landmark_table
    for name in LANDMARKS:
        std = table[name].std(axis=0)
        assert np.all((std > 1.0) & (std < 10.0)), (name, std)
    for name in ("left_eye", "right_eye"):
        assert np.all(table[name].std(axis=0) < 4.0)
    assert 3.0 < table["nose"][:, 0].std() < 7.0  # the nose moves with head turns
    for name in ("left_mouth", "right_mouth"):
        assert np.all((table[name].std(axis=0) > 2.0) & (table[name].std(axis=0) < 6.0))


def test_nose_offset_follows_yaw(landmark_table):
    table, yaw = landmark_table
    offset = table["nose"][:, 0] - 0.5 * (table["left_eye"][:, 0] + table["right_eye"][:, 0])
    assert offset.std() > 2.0
    assert np.corrcoef(offset, yaw)[0, 1] > 0.8


# --------------------------------------------------------------------------------------------
# DataLoader
# --------------------------------------------------------------------------------------------


def test_dataloader_batches():
    dataset = SyntheticFaces(16, seed=0)
    batches = list(DataLoader(dataset, batch_size=8))
    assert len(batches) == 2
    for batch in batches:
        assert batch["image"].shape == (8, 3, HEIGHT, WIDTH)
        assert batch["image"].dtype == torch.float32
        for name in LANDMARKS:
            assert batch[name].shape == (8, 2) and batch[name].dtype == torch.float32
    assert torch.equal(batches[1]["nose"][3], dataset[11]["nose"])


def test_dataloader_workers_give_the_same_batches():
    dataset = SyntheticFaces(8, seed=6)
    serial = next(iter(DataLoader(dataset, batch_size=4, shuffle=False)))
    parallel = next(iter(DataLoader(dataset, batch_size=4, shuffle=False, num_workers=2)))
    assert _equal_items(serial, parallel)


# --------------------------------------------------------------------------------------------
# Drawing many: chunks, worker processes, stopping
# --------------------------------------------------------------------------------------------


#: Children this process already had when the test began (e.g. the e2e tests' session-wide
#: Streamlit server and browser, which live until pytest ends): not the drawing's workers.
_EARLIER_CHILDREN: set[int] = set()


@pytest.fixture(autouse=True)
def _note_earlier_children():
    _EARLIER_CHILDREN.clear()
    _EARLIER_CHILDREN.update(_all_children())
    yield


def _children() -> list[int]:
    """Processes whose parent is this one and that the test made (from /proc; Linux)."""
    return [pid for pid in _all_children() if pid not in _EARLIER_CHILDREN]


def _all_children() -> list[int]:
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == me and fields[0] != "Z":
                found.append(int(entry))
    return found


def _wait_no_children(timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while _children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return _children()


def test_chunks_and_workers_give_the_same_images_as_drawing_one_by_one():
    faces = SyntheticFaces(45, seed=4, image_size=(64, 52))
    one_by_one = [faces.render(i) for i in range(45)]
    images = np.stack([image for image, _ in one_by_one])
    for workers in (1, 2):
        chunks = list(faces.render_chunks(range(45), chunk_size=7, workers=workers))
        assert [len(c) for c, _ in chunks] == [7] * 6 + [3]
        assert np.array_equal(np.concatenate([c for c, _ in chunks]), images)
        for name in LANDMARKS:
            expected = np.stack([marks[name] for _, marks in one_by_one])
            assert np.array_equal(np.concatenate([m[name] for _, m in chunks]), expected)
    drawn, marks = faces.render_many([44, 3, -1], workers=2)
    assert np.array_equal(drawn, images[[44, 3, 44]])
    assert np.array_equal(marks["nose"][1], one_by_one[3][1]["nose"])
    assert _wait_no_children() == []
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        next(faces.render_chunks(range(3), chunk_size=0))


@pytest.mark.parametrize("workers", [1, 2])
def test_render_many_stops_within_two_seconds_of_its_stop_event(workers):
    from mist_core.experiment import PreparationStopped

    faces = SyntheticFaces(700, seed=0)
    stop = threading.Event()
    stop.set()
    with pytest.raises(PreparationStopped):
        faces.render_many(range(700), workers=workers, stop_event=stop)
    stop.clear()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    start = time.monotonic()
    with pytest.raises(PreparationStopped, match="drawing faces stopped"):
        faces.render_many(range(700), workers=workers, stop_event=stop)
    took = time.monotonic() - start
    timer.join()
    assert took < 1.0 + 2.0, f"the stop took {took - 1.0:.2f} s"
    assert _wait_no_children(2.0) == [], "the workers are killed at once"


def test_closing_the_chunks_early_kills_the_workers():
    faces = SyntheticFaces(2000, seed=0)
    chunks = faces.render_chunks(range(2000), chunk_size=32, workers=2)
    first, _ = next(chunks)
    assert len(first) == 32 and len(_children()) == 2
    chunks.close()
    assert _wait_no_children(2.0) == []


def test_workers_started_from_another_thread_draw_the_same_faces():
    """The dashboard draws in job threads: the workers' set-up (signals, prctl) must work
    when they are forked from a thread that is not the main one."""
    faces = SyntheticFaces(40, seed=2, image_size=(64, 52))
    out = {}
    thread = threading.Thread(target=lambda: out.update(d=faces.render_many(range(40), 2)))
    thread.start()
    thread.join()
    assert np.array_equal(out["d"][0], faces.render_many(range(40), workers=1)[0])
