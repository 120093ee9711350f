"""How far each network's most likely landmark lies from a reference point on one image.

On a photo nobody annotated there is no true landmark to score the posterior maps against,
and when the photo was aligned on its eyes, a network that puts the eyes at the right place
may only have learnt where aligned eyes usually are. A face detector's five landmarks
(``mist_core.photos.detect_face``) are an independent reference: for each network and
landmark, :class:`ReferenceDistance` holds the distance from the network's most likely
position (the map's mode) to the reference point, and the log-density the network gives the
reference point, ``log q(reference | x)``, and how much more that is than the average face's
``log q(reference)``.

Coordinates are ``(x, y)`` in pixels of the image the maps cover (the aligned photo),
continuous: pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mist_core.experiment import LandmarkExperiment
from mist_core.posterior import PosteriorMap, encode, landmark_maps

__all__ = [
    "ReferenceDistance",
    "mean_distances",
    "reference_distances",
    "reference_distances_from_maps",
]

Point = tuple[float, float]


@dataclass(frozen=True)
class ReferenceDistance:
    """One network's most likely position of one landmark against the reference point.

    Attributes:
        encoder: the network (an encoder name of the experiment).
        landmark: the landmark.
        reference: the reference point ``(x, y)``, in pixels of the image.
        mode: the network's most likely position ``(x, y)`` (the centre of the pixel where
            ``q(landmark | x)`` is highest).
        distance: ``|mode - reference|`` in pixels.
        eye_distances: ``distance`` over the distance between the reference's two eyes (a
            size-free measure: 0.1 is a tenth of the eye-to-eye distance); None when the
            reference has not both eyes.
        log_density: ``log q(reference | x)``, nats (density per square pixel).
        gain: ``log q(reference | x) - log q(reference)``, nats: how much more probable the
            network makes the reference point than the average face does (the pointwise MI
            at the reference; positive: seeing the image moved it towards the reference).
    """

    encoder: str
    landmark: str
    reference: Point
    mode: Point
    distance: float
    eye_distances: float | None
    log_density: float
    gain: float


def _inter_eye(reference: Mapping[str, Sequence[float]]) -> float | None:
    if "left_eye" not in reference or "right_eye" not in reference:
        return None
    d = math.dist(reference["left_eye"], reference["right_eye"])
    return d if d > 0 else None


def reference_distances_from_maps(
    maps: Mapping[str, Sequence[PosteriorMap]], reference: Mapping[str, Sequence[float]]
) -> list[ReferenceDistance]:
    """The rows of :func:`reference_distances` from posterior maps already computed.

    Args:
        maps: ``{landmark: maps}``, each the list :func:`mist_core.posterior.posterior_maps`
            (or ``landmark_maps``) returns for that landmark with ``truth=reference[landmark]``:
            the marginal's map first, then one per encoder.
        reference: ``{landmark: (x, y)}``, the reference points, in pixels of the maps' image.

    Returns:
        One row per landmark (in ``maps``' order) and encoder (in each list's order).

    Raises:
        ValueError: when a landmark has no reference point, or its maps were not computed at
            that point.
    """
    inter_eye = _inter_eye(reference)
    rows = []
    for landmark, landmark_maps_ in maps.items():
        if landmark not in reference:
            raise ValueError(f"no reference point for {landmark!r}; it has {list(reference)}")
        point = (float(reference[landmark][0]), float(reference[landmark][1]))
        for pmap in landmark_maps_:
            if pmap.encoder is None:
                continue
            if pmap.truth is None or math.dist(pmap.truth, point) > 1e-4:
                raise ValueError(
                    f"the {landmark!r} map of {pmap.encoder!r} was computed at {pmap.truth}, "
                    f"not at the reference {point}: pass truth=reference[landmark]"
                )
            assert pmap.log_prob_at_truth is not None and pmap.pointwise_mi is not None
            distance = math.dist(pmap.mode, point)
            rows.append(
                ReferenceDistance(
                    encoder=pmap.encoder,
                    landmark=landmark,
                    reference=point,
                    mode=(float(pmap.mode[0]), float(pmap.mode[1])),
                    distance=distance,
                    eye_distances=None if inter_eye is None else distance / inter_eye,
                    log_density=float(pmap.log_prob_at_truth),
                    gain=float(pmap.pointwise_mi),
                )
            )
    return rows


@torch.no_grad()
def reference_distances(
    experiment: LandmarkExperiment,
    image: Tensor,
    reference: Mapping[str, Sequence[float]],
    *,
    encoders: Sequence[str] | None = None,
) -> list[ReferenceDistance]:
    """For each landmark of ``reference`` and each encoder: how far the encoder's most likely
    position lies from the reference point, and the log-density it gives that point.

    The image is encoded once per encoder (:func:`mist_core.posterior.encode`); each
    landmark's maps then cover the whole ``[H, W]`` grid (the mode is its best pixel).

    Args:
        experiment: a trained DoE experiment (it holds the marginal q(landmark)).
        image: ``[3, H, W]`` in [0, 1], e.g. the aligned photo.
        reference: ``{landmark: (x, y)}`` in pixels of ``image``, e.g. the face detector's
            five points carried into the aligned image; landmarks the experiment does not
            have are left out.
        encoders: a subset of the experiment's encoders (default: all).

    Returns:
        One :class:`ReferenceDistance` per landmark (experiment's order) and encoder.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
    names = list(encoders) if encoders is not None else list(experiment.config.encoders)
    unknown = [n for n in names if n not in experiment.encoders]
    if unknown:
        raise ValueError(
            f"unknown encoder(s) {unknown}; this experiment has {list(experiment.encoders)}"
        )
    landmarks = [name for name in experiment.config.landmarks if name in reference]
    model = experiment.model
    was_training = model.training
    model.eval()
    try:
        features = encode(experiment, image, names)
        size = (int(image.shape[1]), int(image.shape[2]))
        maps = {
            name: landmark_maps(experiment, features, name, size, reference[name], masses=())
            for name in landmarks
        }
    finally:
        model.train(was_training)
    return reference_distances_from_maps(maps, reference)


def mean_distances(rows: Sequence[ReferenceDistance]) -> dict[str, float]:
    """``{encoder: mean distance in pixels over its landmarks}``, in the rows' order."""
    by_encoder: dict[str, list[float]] = {}
    for row in rows:
        by_encoder.setdefault(row.encoder, []).append(row.distance)
    return {name: sum(values) / len(values) for name, values in by_encoder.items()}
