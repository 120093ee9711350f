"""The five facial landmarks, in CelebA's order; "left" means image-left, as in CelebA."""

__all__ = ["LANDMARKS"]

LANDMARKS: tuple[str, ...] = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
