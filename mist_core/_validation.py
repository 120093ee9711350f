"""Argument checks shared by the factories: unknown names fail loudly, listing the valid ones."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TypeVar

__all__ = ["strict_kwargs"]

F = TypeVar("F", bound=Callable)


def strict_kwargs(func: F) -> F:
    """Turn an unknown keyword argument into a ``ValueError`` that lists the accepted ones.

    Python would raise a ``TypeError`` anyway; this message also names every valid
    argument, which is what a user who mistyped one needs.
    """
    params = inspect.signature(func).parameters
    valid = [name for name, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        unknown = [key for key in kwargs if key not in params]
        if unknown:
            raise ValueError(
                f"{func.__name__}() got unknown argument(s) {', '.join(map(repr, unknown))}; "
                f"valid arguments: {', '.join(valid)}"
            )
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
