"""Do the posterior regions mean what they claim? Coverage of highest-density regions.

A density q over the pixels draws its alpha highest-density (HPD) region: the pixels of
highest density holding a fraction alpha of its mass (:func:`mist_core.posterior.hpd_thresholds`).
The regions are *calibrated* when, over many faces, the true landmark falls inside the
alpha-region a fraction alpha of the time, for every alpha.

One number per face says it all: the **HPD rank** of the truth, the mass of the pixels whose
density exceeds the density at the truth (:func:`hpd_rank`). The truth lies inside the
alpha-region exactly when its rank is below alpha, so the coverage at every level comes
from the ranks of the test faces (:func:`coverage`), each with its binomial standard error.
Under calibration the ranks are uniform on [0, 1].

:func:`evaluate_calibration` measures it for a trained experiment over its test faces, on
the same pixel grids the Posteriors page draws, for the marginal q(landmark) and each
encoder's q(landmark | representation); with the mean negative log-density of the truth and
the median distance from the most likely pixel to the truth.

Where the regions are not calibrated, :class:`Recalibration` corrects them from the ranks of
faces held out for validation (:func:`fit_recalibration`): to draw a region that holds the
truth a fraction alpha of the time, draw the HPD region of mass :meth:`Recalibration.mass`
(alpha) instead (a conformal adjustment: with n validation faces exchangeable with the
test faces, the coverage is at least alpha and above it by at most about 1 / n). The
densities, and the MI estimated from them, are unchanged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from mist_core.experiment import LandmarkExperiment
from mist_core.experiment.faces import FaceBatch, count_faces, face_batches, holds_out
from mist_core.posterior import pixel_grid

__all__ = [
    "BATCH_FACES",
    "FIT_LEVELS",
    "LEVELS",
    "Calibration",
    "CalibrationReport",
    "Coverage",
    "DensityCalibration",
    "Recalibration",
    "calibrate",
    "coverage",
    "evaluate_calibration",
    "fit_recalibration",
    "hpd_rank",
]

#: The nominal levels a calibration table reports.
LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def hpd_rank(log_prob: np.ndarray, log_prob_at_truth: float) -> float:
    """The mass of the grid's pixels with a higher density than the truth's: the truth lies
    inside every HPD region of a larger mass, and outside the others.

    Args:
        log_prob: ``[H, W]`` (or any shape) log-density on the pixel grid, as the pages draw
            it; normalised here over the grid, one pixel being one unit of area.
        log_prob_at_truth: the log-density at the true position, on the same scale.

    Returns:
        A number in [0, 1]: 0 when the truth is at the mode, near 1 far in the tails (1 when
        the truth is less likely than every pixel; 1 for a truth at ``-inf``, 0 for one at
        ``+inf`` or NaN).

    Raises:
        ValueError: an empty grid, or a broken one (NaN or ``+inf`` pixels, or none above
            ``-inf``) for a finite truth.
    """
    flat = torch.as_tensor(np.asarray(log_prob, dtype=np.float64)).reshape(1, -1)
    if flat.shape[1] == 0:
        raise ValueError("log_prob is empty: a grid of at least one pixel is needed")
    truth = torch.tensor([float(log_prob_at_truth)], dtype=torch.float64)
    return float(_hpd_ranks(flat, truth)[0])


#: The log-ratio to the top pixel below which :func:`_hpd_ranks` counts a pixel at this.
_FLOOR = -80.0


def _hpd_ranks(log_prob: Tensor, log_prob_at_truth: Tensor) -> Tensor:
    r""":func:`hpd_rank` for ``B`` faces at once, without sorting: ``[B]`` ranks in float64.

    .. math:: r_b = \frac{\sum_p q_{bp} [\log q_{bp} > \log q_b(y^*_b)]}{\sum_p q_{bp}}

    Args:
        log_prob: ``[B, N]`` log-densities over a grid of ``N`` pixels (or ``[1, N]``: one
            grid, as the marginal's, for every face).
        log_prob_at_truth: ``[B]`` the log-density at each face's true position.
    """
    values, truth = log_prob, log_prob_at_truth
    finite = torch.isfinite(truth)
    top = values.amax(-1, keepdim=True)  # [B, 1]
    # Relative to the top pixel, in the grid's precision (float32 for the maps: an ulp
    # each), summed in float64. A pixel below e^-80 of the top counts e^-80 (a pixel at
    # -inf too): N of them are far below an ulp of the total (at least 1), and exp stays
    # off subnormal numbers, tens of times slower. NaN pixels give NaN.
    probs = (values - top).clamp_(min=_FLOOR).exp_()
    total = probs.sum(-1, dtype=torch.float64)
    broken = total.isnan() | ~torch.isfinite(top[:, 0])
    if bool((broken & finite).any()):
        raise ValueError(
            "log_prob has NaN pixels, infinite ones, or none above -inf: the density is broken "
            "(a diverged training?); retrain, or evaluate a run whose curves stayed finite"
        )
    below = values <= truth[:, None]  # [B, N]: outside the region the truth marks
    if probs.shape[0] == below.shape[0]:
        above = probs.masked_fill_(below, 0.0).sum(-1, dtype=torch.float64)
    else:  # one grid for every face
        above = probs.masked_fill(below, 0.0).sum(-1, dtype=torch.float64)
    # The sum over a subset can exceed the total by an ulp when the subset is nearly all
    # of the grid (summed in other blocks): the rank is a fraction, so it is clipped.
    ranks = (above / total).clamp_(max=1.0)
    # a truth at -inf lies outside every region, one at +inf (or NaN) inside all of them
    return torch.where(finite, ranks, (truth < 0).double())


@dataclass(frozen=True)
class Coverage:
    """How often the ``level`` HPD region held the truth: ``observed`` of ``n`` faces, with
    the binomial standard error of that fraction."""

    level: float
    observed: float
    std_error: float
    n: int

    @property
    def gap(self) -> float:
        """``observed - level``: positive when the regions are too wide (underconfident)."""
        return self.observed - self.level


def _checked_ranks(ranks: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(ranks, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no HPD ranks: evaluate at least one face")
    if np.any(~np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
        raise ValueError("HPD ranks must lie in [0, 1] (see hpd_rank)")
    return values


def coverage(
    ranks: Sequence[float] | np.ndarray,
    levels: Sequence[float] = LEVELS,
    recalibration: Recalibration | None = None,
) -> list[Coverage]:
    """The observed coverage at each nominal level, from the HPD ranks of ``n`` faces.

    The truth is inside the ``level`` region when its rank is below ``level`` (as the
    region of :func:`mist_core.posterior.hpd_thresholds` is drawn), or below
    ``recalibration.mass(level)`` when the regions are drawn recalibrated. The standard
    error is that of a binomial fraction, ``sqrt(p (1 - p) / n)`` at the nominal
    ``p = level`` (the spread the observed fraction has when the regions are calibrated).

    Raises:
        ValueError: no ranks, a rank outside [0, 1], or a level outside (0, 1).
    """
    values = _checked_ranks(ranks)
    n = int(values.size)
    out = []
    for level in levels:
        if not 0.0 < level < 1.0:
            raise ValueError(f"coverage levels must lie in (0, 1), got {level}")
        mass = level if recalibration is None else recalibration.mass(level)
        observed = float(np.mean(values < mass))
        out.append(Coverage(level, observed, math.sqrt(level * (1.0 - level) / n), n))
    return out


#: The levels at which a :class:`Recalibration` is fitted (and stored); in between, the
#: masses are interpolated linearly.
FIT_LEVELS: tuple[float, ...] = tuple(round(0.01 * k, 2) for k in range(1, 100))


@dataclass(frozen=True)
class Recalibration:
    """The HPD masses to draw so that the regions hold the truth as often as they say.

    ``masses[k]`` is the mass of the HPD region to draw for a region that holds the truth a
    fraction ``levels[k]`` of the time; between the levels (and towards 0 and 1) the mass
    is interpolated linearly. Fitted on the HPD ranks of ``faces`` validation faces
    (:func:`fit_recalibration`).
    """

    levels: tuple[float, ...]
    masses: tuple[float, ...]
    faces: int

    def __post_init__(self) -> None:
        levels, masses = np.asarray(self.levels, float), np.asarray(self.masses, float)
        if levels.ndim != 1 or levels.shape != masses.shape or levels.size == 0:
            raise ValueError("a recalibration needs as many masses as levels, at least one")
        if not (np.all((levels > 0) & (levels < 1)) and np.all(np.diff(levels) > 0)):
            raise ValueError("recalibration levels must increase within (0, 1)")
        if not (np.all((masses > 0) & (masses <= 1)) and np.all(np.diff(masses) >= 0)):
            raise ValueError("recalibration masses must not decrease, within (0, 1]")

    def mass(self, level: float) -> float:
        """The mass of the HPD region to draw for a region that holds the truth a fraction
        ``level`` of the time."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"levels must lie in (0, 1), got {level}")
        return float(np.interp(level, (0.0, *self.levels, 1.0), (0.0, *self.masses, 1.0)))

    def to_dict(self) -> dict:
        """A JSON-ready dict (:meth:`from_dict` reads it back)."""
        return {"levels": list(self.levels), "masses": list(self.masses), "faces": self.faces}

    @classmethod
    def from_dict(cls, data: Mapping) -> Recalibration:
        """Raises ValueError (with what is wrong) on anything but :meth:`to_dict`'s shape."""
        try:
            return cls(
                tuple(float(v) for v in data["levels"]),
                tuple(float(v) for v in data["masses"]),
                int(data["faces"]),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a recalibration: {error!r}") from None


def fit_recalibration(
    ranks: Sequence[float] | np.ndarray, levels: Sequence[float] = FIT_LEVELS
) -> Recalibration:
    """A conformal :class:`Recalibration` from the HPD ranks of validation faces (never
    test faces): for each level, the mass just above the ``ceil((n + 1) level)``-th smallest
    of the ``n`` ranks (1, the whole grid, when there are too few faces for that level).
    With the test faces exchangeable with the validation faces, the region of that mass
    holds the truth at least ``level`` of the time, and more by about ``1 / n`` at most.

    Raises:
        ValueError: no ranks, or a rank outside [0, 1].
    """
    values = np.sort(_checked_ranks(ranks))
    n = int(values.size)
    masses = []
    for level in levels:
        k = math.ceil((n + 1) * level)
        masses.append(1.0 if k > n else min(1.0, float(np.nextafter(values[k - 1], 2.0))))
    return Recalibration(tuple(float(lv) for lv in levels), tuple(masses), n)


@dataclass(frozen=True)
class Calibration:
    """How one density's posterior regions did over ``n`` faces.

    ``encoder`` is ``None`` for the marginal q(landmark). ``nll`` is the mean of
    ``-log q(truth)`` (nats, per pixel of area); ``median_distance`` the median distance in
    pixels from the most likely pixel centre to the truth; ``ranks`` the faces' HPD ranks.
    """

    encoder: str | None
    landmark: str
    coverage: tuple[Coverage, ...]
    nll: float
    median_distance: float
    ranks: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.ranks)


#: Faces evaluated together by :func:`evaluate_calibration`: a few MB of maps a face, and
#: about half a second a batch for the demo on two CPU cores (a stop waits no longer).
BATCH_FACES = 16


def evaluate_calibration(
    experiment: LandmarkExperiment,
    split: str = "test",
    *,
    levels: Sequence[float] = LEVELS,
    max_faces: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = BATCH_FACES,
) -> list[Calibration]:
    """The calibration of every density of a trained experiment over a split's faces.

    ``split`` is ``"test"``, ``"train"`` or ``"valid"`` (the training faces the experiment
    holds out for validation: where a :class:`Recalibration` is fitted). The faces come
    ``batch_size`` at a time with their representations
    (:func:`mist_core.experiment.faces.face_batches`: the experiment's stored images and
    cached features where it keeps them, else each face encoded at its own resolution),
    and every landmark's densities are evaluated over the 218 x 178 pixel grid as the
    Posteriors page draws them (:func:`mist_core.posterior.landmark_maps`; the same numbers
    up to float rounding, and the stored images' rounding to whole grey levels): the
    marginal's map once, each encoder's for the whole batch at once.
    ``progress(done, total)`` is called before each batch and at the end (it may raise to
    stop: a job's stop).

    Returns:
        One :class:`Calibration` per landmark and density: the marginal first, then the
        encoders, in the config's order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    n = count_faces(experiment, split)
    n = n if max_faces is None else min(max_faces, n)
    if n < 1:
        raise ValueError(f"the {split!r} split has no faces to evaluate")
    names = list(experiment.config.encoders)
    found: dict[tuple[str | None, str], list[np.ndarray]] = {}
    marginals: dict[tuple[str, int, int], Tensor] = {}
    model = experiment.model
    was_training = model.training
    model.eval()
    batches = face_batches(experiment, split, n, batch_size)
    done = 0
    try:
        with contextlib.closing(batches):  # (stops drawing at once on a stop)
            for batch in batches:
                if progress is not None:
                    progress(done, n)
                scores = _batch_scores(experiment, batch, names, marginals)
                for key, rows in scores.items():
                    found.setdefault(key, []).append(rows)
                done += len(batch)
        if progress is not None:
            progress(n, n)
    finally:
        model.train(was_training)
    return _summaries(
        {key: np.concatenate(parts) for key, parts in found.items()},
        experiment.config.landmarks,
        names,
        levels,
    )


@torch.no_grad()
def _batch_scores(
    experiment: LandmarkExperiment,
    batch: FaceBatch,
    names: Sequence[str],
    marginals: dict[tuple[str, int, int], Tensor],
) -> dict[tuple[str | None, str], np.ndarray]:
    """``{(encoder or None, landmark): [B, 3]}``: each face's HPD rank, ``-log q(truth)`` and
    the distance from the most likely pixel to the truth, for a batch of faces with their
    representations.

    ``marginals`` caches the marginal's map ``[1, H * W]`` per landmark and grid size: it
    does not depend on the face."""
    height, width = batch.frame
    features = batch.features  # {encoder: [B, D]}
    grid = pixel_grid(height, width).to(next(iter(features.values())).device)  # [H, W, 2]
    estimators = experiment.pair_estimators.estimators
    out = {}
    for landmark in experiment.config.landmarks:
        truth = batch.truths[landmark]  # [B, 2]
        # q(landmark) is shared by the encoders' estimators: any pair of the landmark has it
        q_landmark = estimators[f"{names[0]};{landmark}"].q_Y
        key = (landmark, height, width)
        if key not in marginals:
            marginals[key] = q_landmark.log_prob(grid).reshape(1, -1)
        maps = {None: (marginals[key], q_landmark.log_prob(truth))}
        for name in names:
            q = estimators[f"{name};{landmark}"].q_Y_given_X
            context = features[name]
            log_prob = q.condition(context[:, None, None, :]).log_prob(grid)  # [B, H, W]
            maps[name] = (log_prob.reshape(len(batch), -1), q.condition(context).log_prob(truth))
        for encoder, (log_prob, at_truth) in maps.items():
            out[(encoder, landmark)] = _scores(log_prob, at_truth, truth, width)
    return out


def _scores(log_prob: Tensor, at_truth: Tensor, truth: Tensor, width: int) -> np.ndarray:
    """``[B, 3]``: HPD rank, ``-log q(truth)`` and the distance (px) from the most likely
    pixel centre to the truth, from ``log_prob [B or 1, H * W]``, ``at_truth [B]`` and
    ``truth [B, 2]`` as ``(x, y)``."""
    ranks = _hpd_ranks(log_prob, at_truth)
    top = log_prob.argmax(-1)  # the first most likely pixel, as numpy's argmax
    mode = torch.stack([top % width, top // width], dim=-1).double() + 0.5  # [B or 1, 2]
    distance = torch.linalg.vector_norm(mode - truth.double(), dim=-1)
    return torch.stack([ranks, -at_truth.double(), distance], dim=-1).cpu().numpy()


def _summaries(
    found: Mapping[tuple[str | None, str], np.ndarray],
    landmarks: Sequence[str],
    names: Sequence[str],
    levels: Sequence[float],
) -> list[Calibration]:
    out = []
    for landmark in landmarks:
        for encoder in [None, *names]:
            rows = found[(encoder, landmark)]  # [faces, 3]: rank, NLL, distance
            out.append(
                Calibration(
                    encoder=encoder,
                    landmark=landmark,
                    coverage=tuple(coverage(rows[:, 0], levels)),
                    nll=float(rows[:, 1].mean()),
                    median_distance=float(np.median(rows[:, 2])),
                    ranks=tuple(float(r) for r in rows[:, 0]),
                )
            )
    return out


@dataclass(frozen=True)
class DensityCalibration:
    """One density's regions on the test faces, as drawn and recalibrated.

    ``coverage``: the regions drawn at their nominal masses; ``recalibrated``: drawn at
    ``recalibration``'s masses (fitted on validation faces; both ``None`` when the run holds
    no faces out). ``encoder`` is ``None`` for the marginal q(landmark).
    """

    encoder: str | None
    landmark: str
    faces: int
    coverage: tuple[Coverage, ...]
    nll: float
    median_distance: float
    recalibration: Recalibration | None = None
    recalibrated: tuple[Coverage, ...] | None = None

    def to_dict(self) -> dict:
        def fractions(rows: Sequence[Coverage] | None) -> list[float] | None:
            return None if rows is None else [c.observed for c in rows]

        return {
            "encoder": self.encoder,
            "landmark": self.landmark,
            "faces": self.faces,
            "observed": fractions(self.coverage),
            "recalibrated": fractions(self.recalibrated),
            "recalibration": None if self.recalibration is None else self.recalibration.to_dict(),
            "nll": self.nll,
            "median_distance": self.median_distance,
        }

    @classmethod
    def from_dict(cls, data: Mapping, levels: Sequence[float]) -> DensityCalibration:
        faces = int(data["faces"])
        if faces < 1:
            raise ValueError(f"a calibration row needs at least one face, got {faces}")

        def rows(fractions: Sequence[float] | None) -> tuple[Coverage, ...] | None:
            if fractions is None:
                return None
            if len(fractions) != len(levels):
                raise ValueError(f"{len(fractions)} coverage fractions for {len(levels)} levels")
            return tuple(
                Coverage(lv, float(f), math.sqrt(lv * (1 - lv) / faces), faces)
                for lv, f in zip(levels, fractions, strict=True)
            )

        encoder = data["encoder"]
        if encoder is not None and not isinstance(encoder, str):
            raise ValueError(f"encoder must be a name or null, got {encoder!r}")
        fit = data.get("recalibration")
        return cls(
            encoder=encoder,
            landmark=str(data["landmark"]),
            faces=faces,
            coverage=rows(data["observed"]) or (),
            nll=float(data["nll"]),
            median_distance=float(data["median_distance"]),
            recalibration=None if fit is None else Recalibration.from_dict(fit),
            recalibrated=rows(data.get("recalibrated")),
        )


@dataclass(frozen=True)
class CalibrationReport:
    """A run's calibration: every density's :class:`DensityCalibration` on the ``split``'s
    faces at ``levels``; what ``summary.json`` keeps under ``"calibration"``."""

    levels: tuple[float, ...]
    split: str
    rows: tuple[DensityCalibration, ...]

    def row(self, encoder: str | None, landmark: str) -> DensityCalibration | None:
        """The row of one density (``encoder=None``: the marginal), or None."""
        for r in self.rows:
            if r.encoder == encoder and r.landmark == landmark:
                return r
        return None

    def recalibrations(self, landmark: str) -> dict[str | None, Recalibration]:
        """``{encoder or None: Recalibration}`` for one landmark's densities that have one:
        what :func:`mist_core.posterior.landmark_maps` draws the regions with."""
        return {
            r.encoder: r.recalibration
            for r in self.rows
            if r.landmark == landmark and r.recalibration is not None
        }

    def pooled(self, encoder: str | None, recalibrated: bool = False) -> list[Coverage] | None:
        """One density's coverage pooled over the landmarks (faces x landmarks trials; the
        standard error treats them as independent, which makes it a little small). None
        when a landmark lacks the recalibrated figures."""
        rows = [r for r in self.rows if r.encoder == encoder]
        tables = [r.recalibrated if recalibrated else r.coverage for r in rows]
        if not rows or any(t is None for t in tables):
            return None
        n = sum(r.faces for r in rows)
        out = []
        for k, level in enumerate(self.levels):
            hits = sum(t[k].observed * r.faces for t, r in zip(tables, rows, strict=True))  # type: ignore[index]
            out.append(Coverage(level, hits / n, math.sqrt(level * (1 - level) / n), n))
        return out

    def to_frame(self, levels: Sequence[float] = (0.5, 0.9)) -> pd.DataFrame:
        """One row per landmark and density: the faces, the percentage of them whose truth
        lay inside each level's region as drawn (``in 50%``) and recalibrated
        (``recalibrated 50%``, when fitted), the NLL (nats) and the median distance (px)."""
        index = {lv: k for k, lv in enumerate(self.levels)}
        missing = [lv for lv in levels if lv not in index]
        if missing:
            raise ValueError(f"levels {missing} were not measured; this report has {self.levels}")
        records = []
        for r in self.rows:
            record: dict = {
                "landmark": r.landmark,
                "density": r.encoder or "q(landmark), no image",
                "faces": r.faces,
            }
            for lv in levels:
                record[f"in {lv:.0%}"] = round(100 * r.coverage[index[lv]].observed, 1)
            if r.recalibrated is not None:
                for lv in levels:
                    record[f"recalibrated {lv:.0%}"] = round(
                        100 * r.recalibrated[index[lv]].observed, 1
                    )
            record["NLL (nats)"] = round(r.nll, 2)
            record["median distance (px)"] = round(r.median_distance, 1)
            records.append(record)
        return pd.DataFrame.from_records(records)

    def to_dict(self) -> dict:
        """JSON-ready (``summary.json["calibration"]``); :meth:`from_dict` reads it back."""
        return {
            "levels": list(self.levels),
            "split": self.split,
            "rows": [r.to_dict() for r in self.rows],
        }

    @classmethod
    def from_dict(cls, data: object) -> CalibrationReport:
        """Raises ValueError saying what is wrong (a damaged or foreign summary)."""
        try:
            assert isinstance(data, Mapping), "not an object"
            levels = tuple(float(v) for v in data["levels"])
            if not all(0 < lv < 1 for lv in levels):
                raise ValueError(f"levels must lie in (0, 1), got {levels}")
            rows = tuple(DensityCalibration.from_dict(r, levels) for r in data["rows"])
            return cls(levels, str(data["split"]), rows)
        except (AssertionError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"summary.json: unreadable 'calibration': {error}") from None


def calibrate(
    experiment: LandmarkExperiment,
    *,
    faces: int | None = 300,
    valid_faces: int | None = 1200,
    levels: Sequence[float] = LEVELS,
    progress: Callable[[str, int, int], None] | None = None,
) -> CalibrationReport:
    """A trained experiment's :class:`CalibrationReport`: coverage on (up to) ``faces`` test
    faces, as drawn and after a :class:`Recalibration` fitted on (up to) ``valid_faces``
    validation faces (none when the experiment holds none out, or ``valid_faces=0``).

    ``progress(split, done, total)`` is called before each batch of faces
    (:func:`evaluate_calibration`). Costs about 30-40 ms a face for two encoders and five
    landmarks on one CPU core (0.3 s with a face at a time).
    """

    def reporter(split: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda done, total: progress(split, done, total))

    fits: dict[tuple[str | None, str], Recalibration] = {}
    if valid_faces != 0 and holds_out(experiment):
        valid = evaluate_calibration(
            experiment, "valid", levels=levels, max_faces=valid_faces, progress=reporter("valid")
        )
        fits = {(v.encoder, v.landmark): fit_recalibration(v.ranks) for v in valid}
    test = evaluate_calibration(
        experiment, "test", levels=levels, max_faces=faces, progress=reporter("test")
    )
    rows = []
    for t in test:
        fit = fits.get((t.encoder, t.landmark))
        rows.append(
            DensityCalibration(
                encoder=t.encoder,
                landmark=t.landmark,
                faces=t.n,
                coverage=t.coverage,
                nll=t.nll,
                median_distance=t.median_distance,
                recalibration=fit,
                recalibrated=None if fit is None else tuple(coverage(t.ranks, levels, fit)),
            )
        )
    return CalibrationReport(tuple(levels), "test", tuple(rows))
