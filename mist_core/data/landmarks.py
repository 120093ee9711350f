"""The five facial landmarks and the geometry of aligned CelebA images.

"Left" means image-left, as in CelebA. Points are ``(x, y)`` in pixels of the aligned
178 x 218 image, x to the right and y downward.
"""

__all__ = [
    "CELEBA_EYE_MIDPOINT",
    "CELEBA_HEIGHT",
    "CELEBA_LANDMARKS",
    "CELEBA_SIZE",
    "CELEBA_WIDTH",
    "LANDMARKS",
]

LANDMARKS: tuple[str, ...] = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")

CELEBA_HEIGHT: int = 218
CELEBA_WIDTH: int = 178
#: ``(height, width)`` of an aligned CelebA image.
CELEBA_SIZE: tuple[int, int] = (CELEBA_HEIGHT, CELEBA_WIDTH)

#: Mean ``(x, y)`` of the five landmarks in aligned CelebA, in ``LANDMARKS`` order.
CELEBA_LANDMARKS: dict[str, tuple[float, float]] = {
    "left_eye": (69.0, 111.2),
    "right_eye": (107.6, 111.5),
    "nose": (88.5, 135.3),
    "left_mouth": (71.5, 152.1),
    "right_mouth": (105.4, 152.3),
}

#: ``(x, y)`` where aligned CelebA puts the point between the eyes: the drawn faces' anchor.
CELEBA_EYE_MIDPOINT: tuple[float, float] = (88.5, 111.5)
