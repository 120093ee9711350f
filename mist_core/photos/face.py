"""A face found on a photo: its box, and its eyes or its five landmarks when they were found.

Coordinates are ``(x, y)`` in pixels of the photo, x to the right and y downward, continuous
(the centre of pixel row ``i``, column ``j`` is ``(j + 0.5, i + 0.5)``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mist_core.data.landmarks import LANDMARKS

__all__ = ["DETECTORS", "Face"]

Point = tuple[float, float]

#: The face detectors, from the most to the least precise: what ``Face.detector`` says.
DETECTORS: tuple[str, ...] = ("yuface", "haar")


@dataclass(frozen=True)
class Face:
    """A detected face, in the photo's pixel coordinates.

    Attributes:
        box: ``(x, y, w, h)``: the face box's top-left corner and size.
        eyes: the centres ``(x, y)`` of the image-left eye and the image-right eye, or None
            when they were not both found.
        score: how sure the detector is: for ``"haar"``, the number of merged detections
            behind the box (~3-100); for ``"yuface"``, its confidence in percent (50-100).
        points: the five landmarks ``(x, y)`` in the order of ``mist_core.data.LANDMARKS``
            (image-left eye, image-right eye, nose tip, image-left and image-right mouth
            corners), or None when the detector does not give them (Haar).
        detector: which detector found it: ``"yuface"`` (libfacedetection, five points) or
            ``"haar"`` (OpenCV's cascades: box and eyes). A face made by hand says ``"haar"``
            unless told otherwise.
    """

    box: tuple[float, float, float, float]
    eyes: tuple[Point, Point] | None = None
    score: float = 0.0
    points: tuple[Point, Point, Point, Point, Point] | None = None
    detector: str = "haar"

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.points is not None:
            points = tuple((float(x), float(y)) for x, y in self.points)
            if len(points) != len(LANDMARKS):
                raise ValueError(
                    f"points must hold the {len(LANDMARKS)} landmarks {LANDMARKS}, "
                    f"got {len(points)} points"
                )
            object.__setattr__(self, "points", points)

    @property
    def named_points(self) -> dict[str, Point] | None:
        """``{landmark: (x, y)}`` of the five points (``LANDMARKS`` order), or None."""
        if self.points is None:
            return None
        return dict(zip(LANDMARKS, self.points, strict=True))
