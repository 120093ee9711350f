"""Numeric precision of the image encoders: float32, or bfloat16 where the hardware is fast.

Only training steps of trained encoders (training mode, gradients on) run in bfloat16,
under ``torch.autocast`` with channels-last inputs; their features come out as float32, and
every density, estimator and optimizer state stays float32. On a CPU with AMX this makes a
ResNet18 training step about 2.5-3x faster; the features differ from float32 ones by about
2% (the tolerance is stated and tested in ``tests/unit/test_precision.py``).

Evaluation, frozen encoders' features and posterior maps always run in float32: bfloat16
convolutions are not bit-reproducible (oneDNN's results vary with buffer alignment), and a
checkpoint must give the same MI table every time it is evaluated.

``"auto"`` picks bfloat16 only where it is fast: CUDA devices that support it, and CPUs with
AMX tiles or AVX512-BF16 instructions. Elsewhere bfloat16 would be emulated and slower, so
``"auto"`` means float32 there.
"""

from __future__ import annotations

import torch

__all__ = ["PRECISIONS", "fast_bfloat16", "resolve_precision"]

#: Accepted values of ``precision``: ``"auto"`` resolves to one of the other two.
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")


def fast_bfloat16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively (faster than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        try:  # private helpers of torch.cpu: absent or failing means "do not assume"
            return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"float32"`` or ``"bfloat16"``: ``precision`` itself, or what ``"auto"`` means on
    ``device`` (:func:`fast_bfloat16`).

    Raises:
        ValueError: ``precision`` is not one of :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if fast_bfloat16(device) else "float32"
    return precision
