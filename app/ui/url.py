"""A page's selections in the URL, so that a reload or a pasted link opens the same view.

A widget whose value should live in the URL gets its session value from the URL before it
is drawn (:func:`restore`, :func:`restore_list`), only the first time the session meets it;
after it is drawn, the page writes its value back (:func:`keep`, :func:`keep_list`). A value
in the URL that is no longer valid (a deleted run, a hand-edited link) is ignored: the widget
falls back to its default. The Train page keeps its job in the URL the same way
(``?job=...``, :func:`ui.state.attach`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import streamlit as st

__all__ = ["keep", "keep_list", "restore", "restore_list"]

T = TypeVar("T")


def restore(
    key: str,
    param: str,
    default: T,
    *,
    parse: Callable[[str], T] = str,  # type: ignore[assignment]
    valid: Callable[[T], bool] = lambda value: True,
) -> None:
    """Give the widget ``key`` its value before it is drawn: the session's own when it has
    one that is still ``valid``, else the URL's ``param`` (parsed) when valid, else
    ``default``. Draw the widget without ``value``/``index``/``default`` afterwards."""
    if key in st.session_state and _valid(valid, st.session_state[key]):
        return
    text = st.query_params.get(param)
    if text is not None:
        try:
            value = parse(text)
        except (TypeError, ValueError):
            value = None
        if value is not None and _valid(valid, value):
            st.session_state[key] = value
            return
    st.session_state[key] = default


def restore_list(key: str, param: str, options: Sequence[str], default: Sequence[str]) -> None:
    """:func:`restore` for a multi-select of strings: the URL may repeat ``param``
    (``?run=a&run=b``); values not among ``options`` are dropped, and an empty result falls
    back to ``default``."""
    allowed = set(options)
    if key in st.session_state:
        kept = [v for v in st.session_state[key] if v in allowed]
        if kept or not st.session_state[key]:
            st.session_state[key] = kept
            return
    from_url = [v for v in dict.fromkeys(st.query_params.get_all(param)) if v in allowed]
    st.session_state[key] = from_url or [v for v in default if v in allowed]


def keep(param: str, value: Any, default: Any = None) -> None:
    """Write ``value`` into the URL as ``param`` (removed when it equals ``default``, so the
    plain page keeps a plain URL)."""
    if value is None or value == default:
        if param in st.query_params:
            del st.query_params[param]
        return
    text = str(value)
    if st.query_params.get(param) != text:
        st.query_params[param] = text


def keep_list(param: str, values: Sequence[str]) -> None:
    """Write ``values`` into the URL as ``param`` repeated (removed when empty)."""
    values = list(values)
    if not values:
        if param in st.query_params:
            del st.query_params[param]
        return
    if st.query_params.get_all(param) != values:
        st.query_params[param] = values


def _valid(valid: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(valid(value))
    except (TypeError, ValueError):
        return False
