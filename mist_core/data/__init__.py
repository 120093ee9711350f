"""Datasets of faces with landmarks: drawn faces (the offline default) and real CelebA;
and the cache of frozen encoders' features."""

from mist_core.data.celeba import CelebALandmarks, CelebAMissingError, expected_files
from mist_core.data.features import FeatureCache, WithFeatures, compute_features
from mist_core.data.landmarks import LANDMARKS
from mist_core.data.synthetic_faces import SyntheticFaces, render_face

__all__ = [
    "LANDMARKS",
    "CelebALandmarks",
    "CelebAMissingError",
    "FeatureCache",
    "SyntheticFaces",
    "WithFeatures",
    "compute_features",
    "expected_files",
    "render_face",
]
