"""Images (and frozen features) prepared ahead of the trainings that will use them.

Drawing or loading a few thousand faces and running the frozen encoders over them takes
longer than a short training; a UI starts it while the user is still choosing settings, and
the job that trains the same images later picks them up here.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path

from mist_core.data.features import FeatureCache, default_feature_cache
from mist_core.data.stopping import PreparationStopped
from mist_core.experiment.config import ExperimentConfig
from mist_core.experiment.model import LandmarkExperiment

__all__ = ["MAX_PREPARED_DATASETS", "PreparedImages"]

#: How many prepared image sets a PreparedImages keeps in memory (each is a whole dataset).
MAX_PREPARED_DATASETS = 2
#: How often a thread waiting for another one's preparation looks at its stop event.
_POLL_S = 0.1


class PreparedImages:
    """Images (and frozen features) drawn or loaded ahead of the jobs that will use them.

    Keeps the most recent few image sets in memory (:data:`MAX_PREPARED_DATASETS`), keyed by
    what defines the images; several job registries, or a warm-up started before any
    registry exists, can share one. Thread-safe: concurrent :meth:`prepare` calls for the
    same images do the work once.
    """

    def __init__(self, feature_cache: FeatureCache | None = None) -> None:
        self.feature_cache = (
            feature_cache if feature_cache is not None else default_feature_cache()
        )
        self._lock = threading.Lock()
        self._data: OrderedDict[str, dict] = OrderedDict()
        self._ready: set[str] = set()
        self._data_locks: dict[str, threading.Lock] = {}

    @staticmethod
    def data_key(config: ExperimentConfig) -> str:
        """Identifies the images a config trains and tests on."""
        c = config
        root = str(Path(c.celeba_root).resolve()) if c.celeba_root else ""
        return json.dumps(
            [c.dataset, root, c.train_size, c.test_size, c.seed, list(c.image_size), c.preload]
        )

    def get(
        self, config: ExperimentConfig, stop_event: threading.Event | None = None
    ) -> dict | None:
        """The images of ``config`` if they were prepared, else ``None``; waits while
        another thread is preparing them, unless ``stop_event`` is set meanwhile
        (:class:`~mist_core.experiment.PreparationStopped`, within ~0.1 s)."""
        key = self.data_key(config)
        with self._lock:
            lock = self._data_locks.get(key)
        if lock is None:
            return None
        while not lock.acquire(timeout=_POLL_S):  # a preparation in flight finishes first
            if stop_event is not None and stop_event.is_set():
                raise PreparationStopped("stopped while waiting for the images being prepared")
        try:
            with self._lock:
                return self._data.get(key)
        finally:
            lock.release()

    def ready(self, config: ExperimentConfig) -> bool:
        """Whether ``config``'s images and features are ready (never waits)."""
        with self._lock:
            return self.data_key(config) in self._ready

    def prepare(self, config: ExperimentConfig) -> None:
        """Draw or load ``config``'s images and compute its frozen encoders' features now."""
        key = self.data_key(config)
        with self._lock:
            lock = self._data_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                data = self._data.get(key)
            experiment = LandmarkExperiment(config, cache=self.feature_cache, data=data)
            data = experiment.datasets()
            experiment.prepare(("train",))  # what training needs first
            with self._lock:
                self._data[key] = data
                self._data.move_to_end(key)
                self._ready.add(key)
                while len(self._data) > MAX_PREPARED_DATASETS:
                    old, _ = self._data.popitem(last=False)
                    self._data_locks.pop(old, None)
                    self._ready.discard(old)
        experiment.prepare(("test",))  # a waiting job may train meanwhile
