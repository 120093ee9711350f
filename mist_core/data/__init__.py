"""Datasets of faces with landmarks: drawn faces (the offline default) and real CelebA;
the cache of frozen encoders' features; and images decoded once into a store on disk."""

from mist_core.data.celeba import CelebALandmarks, CelebAMissingError, expected_files
from mist_core.data.features import FeatureCache, WithFeatures, compute_features
from mist_core.data.landmarks import LANDMARKS
from mist_core.data.store import StoreConfig, StoredImages, open_store
from mist_core.data.synthetic_faces import SyntheticFaces, render_face

__all__ = [
    "LANDMARKS",
    "CelebALandmarks",
    "CelebAMissingError",
    "FeatureCache",
    "StoreConfig",
    "StoredImages",
    "SyntheticFaces",
    "WithFeatures",
    "compute_features",
    "expected_files",
    "open_store",
    "render_face",
]
