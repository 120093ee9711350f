"""The five-point face detector (YuNet through ``yuface``), the least-squares alignment on
five points, and the distances of the networks' landmarks to the detector's.

The real photograph is scikit-image's astronaut (NASA's public-domain portrait of Eileen
Collins, 512 x 512, shipped in the scikit-image wheel: no download).
"""

from __future__ import annotations

import logging
import math
import sys

import cv2
import numpy as np
import pytest
import torch

from mist_core.data import LANDMARKS
from mist_core.photos import (
    CELEBA_LANDMARKS,
    Face,
    align_to_face,
    align_to_points,
    detect_face,
    detect_five_points,
    fit_similarity,
    five_point_detector_available,
    yunet,
)
from mist_core.photos.align import _similarity

TEMPLATE = np.array([CELEBA_LANDMARKS[name] for name in LANDMARKS])
#: YuNet's answer on the astronaut (whole pixels), measured with yuface 2023.5.1: image-left
#: eye, image-right eye, nose tip, image-left and image-right mouth corners; confidence 93.
ASTRONAUT_POINTS = np.array([[200, 101], [247, 102], [220, 124], [198, 142], [239, 143]]) + 0.5

needs_yuface = pytest.mark.skipif(
    not five_point_detector_available(), reason="yuface has wheels for Linux and Windows only"
)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()


@pytest.fixture
def no_yuface(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import yuface`` fails, as on a Mac (a None entry in sys.modules raises ImportError)."""
    monkeypatch.setitem(sys.modules, "yuface", None)
    monkeypatch.setattr(yunet, "_warned", False)


def _sum_sq(matrix: np.ndarray, source: np.ndarray, target: np.ndarray) -> float:
    mapped = source @ matrix[:, :2].T + matrix[:, 2]
    return float(((mapped - target) ** 2).sum())


# --------------------------------------------------------------------------------------------
# The least-squares similarity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("angle", "scale", "shift"),
    [(0.0, 1.0, (0.0, 0.0)), (0.3, 0.37, (-40.0, 12.5)), (-2.5, 4.2, (300.0, -80.0))],
)
def test_a_known_similarity_is_recovered_exactly(angle, scale, shift) -> None:
    # Photo points = the inverse of a known alignment applied to the template.
    a = scale * complex(math.cos(angle), math.sin(angle))
    truth = _similarity(a.real, a.imag, *shift)
    inverse = np.linalg.inv(np.vstack([truth, [0.0, 0.0, 1.0]]))[:2]
    photo = TEMPLATE @ inverse[:, :2].T + inverse[:, 2]
    alignment = align_to_points(photo)
    assert alignment.method == "five points"
    np.testing.assert_allclose(alignment.matrix, truth, atol=1e-9)
    np.testing.assert_allclose(alignment.to_aligned(photo), TEMPLATE, atol=1e-9)


def test_the_fit_is_least_squares_under_noise() -> None:
    rng = np.random.default_rng(0)
    source = TEMPLATE * 2.3 + [400.0, 150.0] + rng.normal(0, 3.0, TEMPLATE.shape)
    fitted = fit_similarity(source, TEMPLATE)
    m = fitted
    assert m[0, 0] == pytest.approx(m[1, 1]) and m[0, 1] == pytest.approx(-m[1, 0])
    # The same 4-parameter least-squares problem solved as a real linear system:
    # x' = a x - b y + tx, y' = b x + a y + ty.
    x, y = source[:, 0], source[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    design = np.vstack(
        [np.column_stack([x, -y, ones, zeros]), np.column_stack([y, x, zeros, ones])]
    )
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, TEMPLATE.T.ravel(), rcond=None)
    np.testing.assert_allclose(fitted, [[a, -b, tx], [b, a, ty]], atol=1e-9)
    # Not worse than the eyes-only alignment (exact on the eyes, blind to the rest), nor than
    # any nearby similarity.
    best = _sum_sq(fitted, source, TEMPLATE)
    eyes_only = align_to_face(Face(box=(300, 100, 200, 200), eyes=tuple(map(tuple, source[:2]))))
    assert eyes_only.method == "eyes"
    assert best <= _sum_sq(eyes_only.matrix, source, TEMPLATE)
    for _ in range(50):
        da, db, dtx, dty = rng.normal(0, [0.01, 0.01, 0.5, 0.5])
        nudged = _similarity(fitted[0, 0] + da, fitted[1, 0] + db, m[0, 2] + dtx, m[1, 2] + dty)
        assert _sum_sq(nudged, source, TEMPLATE) >= best


def test_the_fit_never_reflects() -> None:
    mirrored = TEMPLATE * [-1.0, 1.0]  # the face seen in a mirror
    matrix = fit_similarity(mirrored, TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_five_point_alignment_validation() -> None:
    with pytest.raises(ValueError, match=r"\[5, 2\]"):
        align_to_points(TEMPLATE[:4])
    with pytest.raises(ValueError, match="coincide"):
        align_to_points(np.ones((5, 2)))
    with pytest.raises(ValueError, match="outside the photo"):
        align_to_points(TEMPLATE + 1000.0, (100, 100, 3))
    with pytest.raises(ValueError, match="finite"):
        fit_similarity(np.full((5, 2), np.nan), TEMPLATE)
    with pytest.raises(ValueError, match="5 landmarks"):
        Face(box=(0, 0, 10, 10), points=((1.0, 2.0),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="detector"):
        Face(box=(0, 0, 10, 10), detector="dlib")


def test_alignment_prefers_five_points_then_eyes_then_the_box() -> None:
    points = tuple(map(tuple, TEMPLATE * 2 + 50))
    eyes = (points[0], points[1])
    box = (100.0, 150.0, 200.0, 200.0)
    assert align_to_face(Face(box=box, eyes=eyes, points=points)).method == "five points"
    assert align_to_face(Face(box=box, eyes=eyes)).method == "eyes"
    assert align_to_face(Face(box=box)).method == "face box"
    # Five points off the photo (a broken detection): the eyes, with a warning.
    far = tuple((x + 5000.0, y) for x, y in points)
    with pytest.warns(UserWarning, match="aligning on the eyes"):
        fallback = align_to_face(Face(box=box, eyes=eyes, points=far), (600, 600, 3))
    assert fallback.method == "eyes"


# --------------------------------------------------------------------------------------------
# The detector on a real photograph
# --------------------------------------------------------------------------------------------


@needs_yuface
def test_the_astronaut_has_five_points_and_aligns_on_them(astronaut) -> None:
    face = detect_face(astronaut)
    assert face is not None and face.detector == "yuface" and face.points is not None
    assert face.score >= 80
    # Within 1.5 px of the measured answer (another build of the same weights may round a
    # point the other way).
    np.testing.assert_allclose(face.points, ASTRONAUT_POINTS, atol=1.5)
    assert face.named_points is not None and list(face.named_points) == list(LANDMARKS)
    assert face.eyes == (face.points[0], face.points[1])
    x, y, w, h = face.box
    assert all(x < px < x + w and y < py < y + h for px, py in face.points)
    alignment = align_to_face(face, astronaut.shape)
    assert alignment.method == "five points"
    # Her face is not CelebA's mean face: measured 3.5 px at most (0.09 of the 39 px
    # eye-to-eye distance of the template); 5 px leaves room for a rounding of the points.
    errors = np.linalg.norm(alignment.to_aligned(np.array(face.points)) - TEMPLATE, axis=1)
    assert errors.max() < 5.0, errors


@needs_yuface
def test_a_large_photo_is_detected_on_a_copy_and_scaled_back(astronaut) -> None:
    # 3x: 1536 px, detected on a 640 px copy; the points come back in the large photo's
    # pixels: exactly the copy's answer (taken at its pixels' centres) times 1536 / 640.
    large = cv2.resize(astronaut, (1536, 1536), interpolation=cv2.INTER_CUBIC)
    face = detect_five_points(large)
    copy = detect_five_points(cv2.resize(large, (640, 640), interpolation=cv2.INTER_AREA))
    assert face is not None and copy is not None
    np.testing.assert_allclose(face.points, np.array(copy.points) * 1536 / 640, atol=1e-9)
    np.testing.assert_allclose(face.box, np.array(copy.box) * 1536 / 640, atol=1e-9)
    # YuNet itself moves a point by up to ~5 px of the original between the 512 px and the
    # 640 px version of the same face (measured 5.1 px): 0.15 of the eye-to-eye distance.
    inter_eye = np.linalg.norm(ASTRONAUT_POINTS[1] - ASTRONAUT_POINTS[0]) * 3
    errors = np.linalg.norm(np.array(face.points) - ASTRONAUT_POINTS * 3, axis=1)
    assert errors.max() < 0.15 * inter_eye, errors


@needs_yuface
@pytest.mark.parametrize("kind", ["flat", "noise", "tiny"])
def test_no_face_no_points(kind: str) -> None:
    rng = np.random.default_rng(5)
    if kind == "flat":
        image = np.full((480, 640, 3), 128, np.uint8)
    elif kind == "noise":
        image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    else:
        image = np.zeros((1, 1, 3), np.uint8)
    assert detect_five_points(image) is None
    assert detect_face(image, detector="yuface") is None
    assert detect_face(image) is None  # nor the Haar fallback


def test_without_yuface_the_haar_cascades_still_align_the_astronaut(
    astronaut, no_yuface, caplog
) -> None:
    assert not five_point_detector_available()
    with caplog.at_level(logging.WARNING, logger="mist_core.photos.yunet"):
        assert detect_five_points(astronaut) is None
        assert detect_face(astronaut, detector="yuface") is None
        face = detect_face(astronaut)
    notes = [r.message for r in caplog.records if "Haar" in r.message]
    assert len(notes) == 1, notes  # said once, not at every photo
    assert face is not None and face.detector == "haar" and face.points is None
    assert face.eyes is not None
    alignment = align_to_face(face, astronaut.shape)
    assert alignment.method == "eyes"
    # The Haar eyes are within ~2 px of YuNet's, so the five points land within ~5 px of the
    # template (measured 5.5 px at most, a mouth corner).
    errors = np.linalg.norm(alignment.to_aligned(ASTRONAUT_POINTS) - TEMPLATE, axis=1)
    assert errors.max() < 7.0, errors


def test_an_unknown_detector_is_refused(astronaut) -> None:
    with pytest.raises(ValueError, match="detector"):
        detect_face(astronaut, detector="mtcnn")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The networks' distances to the detector's points
# --------------------------------------------------------------------------------------------


def test_reference_distances_match_the_posterior_maps() -> None:
    from mist_core.experiment import LandmarkExperiment, preset
    from mist_core.posterior import posterior_maps
    from mist_core.reference import (
        mean_distances,
        reference_distances,
        reference_distances_from_maps,
    )

    torch.manual_seed(0)
    experiment = LandmarkExperiment(
        preset(
            "demo-cpu",
            image_size=(40, 32),
            encoders=("random_init", "trained"),
            landmarks=("left_eye", "right_eye", "nose"),
        )
    )
    image = torch.rand(3, 40, 32, generator=torch.Generator().manual_seed(1))
    reference = {"left_eye": (11.0, 17.0), "right_eye": (21.0, 17.0), "nose": (16.0, 23.5)}
    rows = reference_distances(experiment, image, {**reference, "chin": (16.0, 38.0)})
    assert [(r.landmark, r.encoder) for r in rows] == [
        (landmark, encoder)
        for landmark in ("left_eye", "right_eye", "nose")
        for encoder in ("random_init", "trained")
    ]
    maps = {
        name: posterior_maps(experiment, image, name, truth=point)
        for name, point in reference.items()
    }
    assert reference_distances_from_maps(maps, reference) == rows
    for row in rows:
        pmap = next(m for m in maps[row.landmark] if m.encoder == row.encoder)
        assert row.mode == pmap.mode and row.reference == reference[row.landmark]
        assert row.distance == pytest.approx(math.dist(pmap.mode, reference[row.landmark]))
        assert row.eye_distances == pytest.approx(row.distance / 10.0)
        assert row.log_density == pytest.approx(pmap.log_prob_at_truth)
        assert row.gain == pytest.approx(pmap.pointwise_mi)
    means = mean_distances(rows)
    assert list(means) == ["random_init", "trained"]
    assert means["trained"] == pytest.approx(
        np.mean([r.distance for r in rows if r.encoder == "trained"])
    )
    # Maps computed at another point are refused, not silently compared.
    with pytest.raises(ValueError, match="not at the reference"):
        reference_distances_from_maps(maps, {**reference, "nose": (1.0, 1.0)})
    with pytest.raises(ValueError, match="no reference point"):
        reference_distances_from_maps(maps, {"nose": reference["nose"]})
    # Without both eyes there is no eye-to-eye unit.
    nose_only = reference_distances_from_maps({"nose": maps["nose"]}, {"nose": reference["nose"]})
    assert all(r.eye_distances is None for r in nose_only)
