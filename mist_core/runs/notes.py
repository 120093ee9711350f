"""A person's notes on a run: :class:`RunNotes`, kept in the run's ``notes.json``.

Notes are the user's, not the trainer's: they are written without the run's writer lock, at
any time in the run's life (while it trains, once it ended), atomically like every run file.
``notes.json`` is plain JSON::

    {"note": "lr 1e-3 diverged after epoch 4", "tags": ["baseline", "lr"], "updated": 1.7e9}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mist_core.runs._files import RunFileError
from mist_core.runs._shapes import _is_number, _is_time, _json_type, _show

__all__ = ["MAX_NOTE_CHARS", "MAX_NOTES_BYTES", "MAX_TAG_CHARS", "MAX_TAGS", "RunNotes"]

#: The longest note, in characters.
MAX_NOTE_CHARS = 10_000
#: The most tags a run may carry.
MAX_TAGS = 20
#: The longest tag, in characters (after stripping spaces).
MAX_TAG_CHARS = 40
#: Largest ``notes.json`` that is read (a full note in escaped JSON is well under it).
MAX_NOTES_BYTES = 2**20

_WHERE = "notes.json"


def _check_note(note: Any) -> str:
    if not isinstance(note, str):
        raise ValueError(f"a run's note must be a string, got {_json_type(note)}")
    if len(note) > MAX_NOTE_CHARS:
        raise ValueError(
            f"a run's note may hold at most {MAX_NOTE_CHARS:,} characters, this one has "
            f"{len(note):,}: shorten it (or keep long texts in a file and name it in the note)"
        )
    return note


def _check_tags(tags: Any) -> tuple[str, ...]:
    """``tags`` stripped, checked and without repeats (the first of each kept, in order)."""
    if isinstance(tags, str):
        raise ValueError(
            f"tags must be a list of strings, not one string ({_show(tags)}); "
            "give ['a', 'b'] (split a comma-separated text first)"
        )
    try:
        items = list(tags)
    except TypeError:
        raise ValueError(f"tags must be a list of strings, got {_json_type(tags)}") from None
    kept: dict[str, None] = {}
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"each tag must be a string, got {_show(item)}")
        tag = item.strip()
        if not tag:
            raise ValueError("a tag must not be empty (or only spaces): remove it")
        if len(tag) > MAX_TAG_CHARS:
            raise ValueError(
                f"tag {_show(tag, 50)} has {len(tag)} characters; use at most {MAX_TAG_CHARS} "
                "(a longer text belongs in the note)"
            )
        if "," in tag or "\n" in tag or "\r" in tag:
            raise ValueError(
                f"tag {_show(tag, 50)} holds a comma or a line break; give each tag on its "
                "own (split 'a, b' into 'a' and 'b')"
            )
        kept[tag] = None
    if len(kept) > MAX_TAGS:
        raise ValueError(f"a run may carry at most {MAX_TAGS} tags, got {len(kept)}: remove some")
    return tuple(kept)


@dataclass(frozen=True)
class RunNotes:
    """A person's note and tags on a run, and when they were last written (Unix seconds;
    ``None`` for a run without notes).

    Checked on creation: ``note`` at most :data:`MAX_NOTE_CHARS` characters; at most
    :data:`MAX_TAGS` tags, each stripped of spaces, non-empty, at most
    :data:`MAX_TAG_CHARS` characters, without commas or line breaks; a repeated tag is kept
    once, where it first came. A list of tags is stored as a tuple.

    Raises:
        ValueError: a note or tag that breaks these rules (the message says what to do).

    >>> RunNotes("first try", [" lr ", "baseline", "lr"]).tags
    ('lr', 'baseline')
    """

    note: str = ""
    tags: tuple[str, ...] = ()
    updated: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "note", _check_note(self.note))
        object.__setattr__(self, "tags", _check_tags(self.tags))
        if self.updated is not None and not _is_time(self.updated):
            raise ValueError(
                f"updated must be a time in seconds since 1970 or None, got {_show(self.updated)}"
            )
        if self.updated is not None:
            object.__setattr__(self, "updated", float(self.updated))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of ``notes.json``: ``{"note", "tags", "updated"}``."""
        return {"note": self.note, "tags": list(self.tags), "updated": self.updated}

    @classmethod
    def from_dict(cls, data: Any) -> RunNotes:
        """Read :meth:`to_dict`'s form (a missing key takes its default; unknown keys are
        left alone).

        Raises:
            RunFileError: not an object, or a field that is not valid (naming ``notes.json``).
        """
        if not isinstance(data, dict):
            raise RunFileError(f"{_WHERE} is {_json_type(data)}, not a JSON object")
        updated = data.get("updated")
        if updated is not None and not _is_number(updated):
            raise RunFileError(
                f"{_WHERE}: 'updated' must be a time in seconds, got {_show(updated)}"
            )
        try:
            return cls(data.get("note", ""), data.get("tags", ()), updated)
        except ValueError as error:
            raise RunFileError(
                f"{_WHERE}: {error}; or set the notes again, which replaces the file"
            ) from None
