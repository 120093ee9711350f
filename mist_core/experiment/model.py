"""The landmark experiment built from a config: :class:`LandmarkExperiment` and the seed's
:func:`instantiate_estimators`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from mist_core import distributed
from mist_core._rng import seeded
from mist_core.data.features import (
    FeatureCache,
    WithFeatures,
    default_feature_cache,
    module_fingerprint,
)
from mist_core.data.landmarks import LANDMARKS
from mist_core.devices import resolve_device
from mist_core.distributions import conditional_transformed_normal, transformed_normal
from mist_core.encoders import ENCODER_PRESETS, build_encoder, encoder_availability
from mist_core.estimators import (
    CLUB,
    CONDITIONAL_DENSITY_ESTIMATORS,
    DoE,
    L1Out,
    MIEstimator,
    MultiMIEstimator,
    TransformedMIEstimator,
    check_estimator_name,
)
from mist_core.experiment.config import REPRESENTATIONS, ExperimentConfig
from mist_core.experiment.data import (
    _OnFirstUse,
    build_datasets,
    images_fingerprint,
    source_images,
    train_valid_indices,
)
from mist_core.freeze import is_frozen
from mist_core.precision import resolve_precision
from mist_core.results import PairEstimate, to_frame
from mist_core.training import Progress, ResumeFrom, TrainState, evaluate_pairs, train_mi_estimator

__all__ = ["LandmarkExperiment", "instantiate_estimators"]


@dataclass
class LandmarkExperiment:
    """The seed's experiment built from a config: encoders, one MI estimator per (encoder,
    landmark) pair, the data and the training.

    Frozen encoders' features come from a :class:`FeatureCache`, so an epoch after the first
    costs only the encoders that are being trained. A run's checkpoints are saved and
    restored by :mod:`mist_core.checkpoints`.

    Attributes:
        config: the config it was built from.
        encoders: ``{name: module}``; frozen ones are frozen with :func:`mist_core.freeze`.
        pair_estimators: the ``MultiMIEstimator`` of one estimator per (encoder, landmark),
            on the encoders' features.
        model: the seed's ``TransformedMIEstimator`` (images -> every encoder ->
            ``pair_estimators``), for posteriors and new images.

    Example (a tiny experiment: 4 + 4 drawn faces, one encoder, one landmark, one step):

    >>> from mist_core.experiment import LandmarkExperiment, preset
    >>> config = preset("demo-cpu", train_size=4, test_size=4, image_size=(32, 32),
    ...                 batch_size=4, epochs=1, valid_fraction=0.0, preload=False,
    ...                 encoders=("random_init",), landmarks=("nose",))
    >>> experiment = LandmarkExperiment(config)
    >>> experiment.train().attrs["steps"]
    1
    >>> [(e.name, e.n, e.estimator) for e in experiment.estimates("test")]
    [('I(random_init;nose)', 4, 'doe')]
    """

    config: ExperimentConfig
    cache: FeatureCache | None = None
    #: ``{"train": ..., "test": ...}`` to reuse images already prepared for the same config.
    data: dict[str, Dataset] | None = None
    #: Set it to stop preparing images or features: :class:`PreparationStopped` is raised
    #: within about a second (training itself takes its own ``stop_event``).
    stop_event: threading.Event | None = None
    encoders: dict[str, nn.Module] = field(init=False)
    pair_estimators: MultiMIEstimator = field(init=False)
    model: TransformedMIEstimator = field(init=False)
    _fingerprints: dict[str, str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        config = self.config
        for name in config.encoders:
            availability = encoder_availability(ENCODER_PRESETS[name])
            if not availability.available:
                raise FileNotFoundError(
                    f"encoder {name!r} is not available: {availability.reason}. "
                    f"{availability.how_to_enable}"
                )
        # Random weights come from torch's global generator: seed it and draw them with no
        # other thread building an experiment at the same time (a dashboard warms one up in
        # the background while a page loads another; interleaved draws would change both).
        with seeded(config.seed):
            self.encoders = {
                name: build_encoder(
                    ENCODER_PRESETS[name], image_size=config.image_size, precision=self.precision
                )
                for name in config.encoders
            }
            estimators = instantiate_estimators(
                representations={name: enc.out_features for name, enc in self.encoders.items()},
                landmarks=config.landmarks,
                estimator=config.estimator,
                hidden_dims=config.hidden_dims,
                marginal_hidden_dims=config.marginal_hidden_dims,
                n_transforms=config.n_transforms,
            )
        self.pair_estimators = MultiMIEstimator(estimators)
        self.model = TransformedMIEstimator(
            base_estimator=self.pair_estimators,
            transforms_rename={("image", name): enc for name, enc in self.encoders.items()},
        )

    # --- the state a checkpoint keeps -------------------------------------------------------

    def _frozen_prefixes(self) -> dict[str, str]:
        return {
            name: f"transforms.{name}." for name, enc in self.encoders.items() if is_frozen(enc)
        }

    def frozen_fingerprints(self) -> dict[str, str]:
        """``{encoder: weights hash}`` of the frozen encoders (rebuilt, not stored, on reload)."""
        if self._fingerprints is None:
            self._fingerprints = {
                name: module_fingerprint(self.encoders[name]) for name in self._frozen_prefixes()
            }
        return dict(self._fingerprints)

    def checkpoint_state(self) -> dict[str, Tensor]:
        """The model's state without the frozen encoders, which the config rebuilds exactly
        (seeded random init, or the ImageNet file); a checkpoint stays small and quick."""
        prefixes = tuple(self._frozen_prefixes().values())
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith(prefixes)}

    def load_checkpoint_state(
        self, state: Mapping[str, Tensor], frozen_fingerprints: Mapping[str, str] | None = None
    ) -> None:
        """Load a :meth:`checkpoint_state`; the rebuilt frozen encoders must be the same ones."""
        if frozen_fingerprints is not None:
            ours = self.frozen_fingerprints()
            changed = sorted(n for n, fp in frozen_fingerprints.items() if ours.get(n) != fp)
            if changed:
                raise ValueError(
                    f"the frozen encoder(s) {changed} rebuilt from the config differ from the "
                    "ones this checkpoint was trained with (other weights file or torch version?)"
                )
        result = self.model.load_state_dict(dict(state), strict=False)
        prefixes = tuple(self._frozen_prefixes().values())
        missing = [k for k in result.missing_keys if not k.startswith(prefixes)]
        if missing or result.unexpected_keys:
            raise ValueError(
                "the checkpoint does not match this experiment's model: "
                f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )

    # --- data -----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return resolve_device(self.config.device)

    @property
    def precision(self) -> str:
        """The trained encoders' arithmetic in training steps, ``"float32"`` or ``"bfloat16"``
        (``config.precision`` with ``"auto"`` resolved for :attr:`device`)."""
        return resolve_precision(self.config.precision, self.device)

    def datasets(self) -> dict[str, Dataset]:
        """``{"train": ..., "test": ...}`` image datasets (preloaded when configured: the
        training images now, the test images when first used).

        Raises:
            PreparationStopped: :attr:`stop_event` was set meanwhile (nothing is kept).
        """
        if self.data is None:
            self.data = self._build_datasets()
        return self.data

    def source_images(self, split: str) -> Dataset:
        """The ``split``'s images at their own resolution (218 x 178 for both datasets), with
        the landmarks in that frame; item ``i`` is image ``i`` of :meth:`datasets`."""
        return source_images(self.config, split)

    def _build_datasets(self) -> dict[str, Dataset]:
        return build_datasets(self.config, self.stop_event)

    def _dataset(self, split: str) -> Dataset:
        """``datasets()[split]``, made now if it is made on first use (stoppable)."""
        dataset = self.datasets()[split]
        if isinstance(dataset, _OnFirstUse):
            dataset.dataset(self.stop_event)
        return dataset

    def fingerprint(self, split: str) -> str:
        """Identifies exactly the images of a split, for the disk feature cache."""
        return images_fingerprint(self.config, split)

    def prepare(self, splits: Sequence[str] = ("train", "test")) -> None:
        """Make the images and the frozen encoders' features of ``splits`` now (training
        does it anyway; this lets a caller do it ahead of time, e.g. while a person reads
        the page).

        Raises:
            PreparationStopped: :attr:`stop_event` was set meanwhile.
        """
        self.datasets()
        for split in splits:
            self._dataset(split)
            self._features(split)

    @property
    def images_stored(self) -> bool:
        """Whether the images are kept at the encoders' size (preloaded, or CelebA's store)."""
        return self.config.preload or self.config.dataset == "celeba"

    def _features(self, split: str) -> dict[str, Tensor]:
        if not self.config.feature_cache:
            return {}
        cache = self.cache if self.cache is not None else default_feature_cache()
        self.cache = cache
        dataset = self._dataset(split)
        fingerprints = self.frozen_fingerprints()
        return {
            name: cache.features(
                enc,
                dataset,
                self.fingerprint(split),
                # stored images are rounded to whole grey levels; features of full-size
                # drawn faces (preload=False) are another table
                extra=f"image_size={tuple(self.config.image_size)},stored={self.images_stored}",
                encoder_fingerprint=fingerprints[name],  # hashed once per experiment
                batch_size=self.config.batch_size,
                device=self.device,
                stop_event=self.stop_event,
            )
            for name, enc in self.encoders.items()
            if is_frozen(enc)
        }

    def training_model(self) -> TransformedMIEstimator | MultiMIEstimator:
        """The model that consumes cached features: only the trained encoders run."""
        if not self.config.feature_cache:
            return self.model
        live = {("image", n): e for n, e in self.encoders.items() if not is_frozen(e)}
        if not live:
            return self.pair_estimators
        return TransformedMIEstimator(base_estimator=self.pair_estimators, transforms_rename=live)

    def _split_indices(self) -> tuple[list[int], list[int]]:
        """Training and validation indices of the training images (fixed by the seed)."""
        n = len(self.datasets()["train"])  # type: ignore[arg-type]
        return train_valid_indices(n, self.config.valid_fraction, self.config.seed)

    def loader(self, split: str, shuffle: bool | None = None) -> DataLoader:
        """Batches of ``"train"``, ``"valid"`` (part of the training images, see
        ``valid_fraction``) or ``"test"``, with cached frozen features when the cache is on.

        Under ``torchrun`` the training batches are sharded: each of the N processes gets
        ``batch_size / N`` images of every batch.
        """
        if split not in ("train", "valid", "test"):
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
        source = "test" if split == "test" else "train"
        dataset: Dataset = self._dataset(source)
        tables = self._features(source)
        if tables:
            dataset = WithFeatures(dataset, tables)
        if split != "test" and self.config.valid_fraction > 0:
            train_idx, valid_idx = self._split_indices()
            dataset = Subset(dataset, train_idx if split == "train" else valid_idx)
        shuffle = (split == "train") if shuffle is None else shuffle
        # decoded images (in memory, or the store's memory map) need no loader processes
        workers = 0 if self.images_stored else self.config.num_workers
        batch_size, sampler = self.config.batch_size, None
        world = distributed.world_size()
        if split == "train" and world > 1:
            if batch_size % world:
                raise ValueError(
                    f"batch_size {batch_size} must be divisible by the {world} processes"
                )
            sampler = DistributedSampler(
                dataset,
                num_replicas=world,
                rank=distributed.rank(),
                shuffle=shuffle,
                seed=self.config.seed,
            )
            batch_size, shuffle = batch_size // world, False
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=workers,
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    # --- training and evaluation ----------------------------------------------------------

    def train(
        self,
        *,
        callback: Callable[[Progress], None] | None = None,
        stop_event: threading.Event | None = None,
        checkpoint: Callable[[TrainState], None] | None = None,
        resume: ResumeFrom | None = None,
        verbose: bool = False,
    ) -> pd.DataFrame:
        """Train every estimator (and the trained encoders) jointly; returns the long log.

        ``callback``, ``stop_event``, ``checkpoint`` and ``resume`` are passed to
        :func:`~mist_core.train_mi_estimator`; for ``resume``, load :attr:`model`'s weights
        first (:func:`mist_core.checkpoints.restore_checkpoint`).
        """
        c = self.config
        self.model.to(self.device)
        start = time.perf_counter()
        train_loader = self.loader("train")
        setup_s = time.perf_counter() - start
        valid_loader = self.loader("valid") if c.valid_fraction > 0 else None
        log = train_mi_estimator(
            self.training_model(),
            train_loader,
            valid_data=valid_loader,
            valid_percentage=0.0,
            max_epochs=c.epochs,
            lr=c.lr,
            lr_schedule=c.lr_schedule,
            early_stopping=c.early_stopping,
            device=self.device,
            seed=c.seed,
            callback=callback,
            stop_event=stop_event,
            checkpoint=checkpoint,
            resume=resume,
            verbose=verbose,
        )
        log.attrs["setup_s"] = setup_s
        return log

    def estimates(self, split: str = "test") -> list[PairEstimate]:
        """The MI of every (encoder, landmark) pair on a split, with its standard error and
        the number of test samples averaged."""
        estimates = evaluate_pairs(
            self.training_model(),
            self.loader(split, shuffle=False),
            device=self.device,
            estimator_name=self.config.estimator,
        )
        if len(estimates) == 1:  # a lone estimator names its variables x and y
            only = (self.config.encoders[0], self.config.landmarks[0])
            estimates = [replace(estimates[0], representation=only[0], target=only[1])]
        return estimates

    def evaluate(self, split: str = "test") -> pd.DataFrame:
        """The MI table on a split: one row per (encoder, landmark) with its standard error
        (columns ``encoder``, ``landmark``, ``mi``, ``std_error``)."""
        return to_frame(self.estimates(split))


def instantiate_estimators(
    representations: Mapping[str, int] | Sequence[str] = REPRESENTATIONS,
    landmarks: Sequence[str] = LANDMARKS,
    *,
    estimator: str = "doe",
    hidden_dims: Sequence[int] = (128, 64),
    marginal_hidden_dims: Sequence[int] = (64,),
    n_transforms: int = 1,
) -> dict[tuple[str, str], MIEstimator]:
    """The seed's helper: one estimator per (representation, landmark), in landmark-major order.

    Args:
        representations: names (512-d each, as ResNet18) or ``{name: feature size}``.
        landmarks: the targets, 2-d pixel coordinates each.
        estimator: ``"doe"`` (the seed's), ``"club"`` or ``"l1out"``.

    Every pair gets its own q(landmark | representation); DoE pairs of the same landmark
    share one q(landmark).
    """
    check_estimator_name(estimator, CONDITIONAL_DENSITY_ESTIMATORS)
    if not isinstance(representations, Mapping):
        representations = {name: 512 for name in representations}
    estimators: dict[tuple[str, str], MIEstimator] = {}
    for landmark in landmarks:
        q_landmark = transformed_normal(
            2, hidden_dims=marginal_hidden_dims, n_transforms=n_transforms
        )
        for name, z_dim in representations.items():
            q_landmark_given_z = conditional_transformed_normal(
                2, context_dim=z_dim, hidden_dims=hidden_dims, n_transforms=n_transforms
            )
            if estimator == "doe":
                estimators[(name, landmark)] = DoE(q_Y_given_X=q_landmark_given_z, q_Y=q_landmark)
            elif estimator == "club":
                estimators[(name, landmark)] = CLUB(q_landmark_given_z)
            else:
                estimators[(name, landmark)] = L1Out(q_landmark_given_z)
    return estimators
