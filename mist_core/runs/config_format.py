"""How a store turns a run's config into ``config.json`` and back: :class:`ConfigFormat`.

The store itself knows no config type: a run's config is a JSON object on disk, and the
format given to :class:`~mist_core.runs.RunStore` decides what :meth:`Run.config` returns
(mist's typed experiment config is :data:`mist_core.checkpoints.EXPERIMENT_CONFIG`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["JSON_OBJECT", "ConfigFormat"]


@dataclass(frozen=True)
class ConfigFormat:
    """A config type's JSON form.

    Attributes:
        to_json: config -> a JSON object (``dict`` of JSON values); ``TypeError`` for a value
            that is not a config of this format.
        from_json: the JSON object read from ``config.json`` -> the config; an exception
            (``ValueError``...) for one that is not valid: the run then lists with that problem.
    """

    to_json: Callable[[Any], dict[str, Any]]
    from_json: Callable[[dict[str, Any]], Any]


def _json_object(config: Any) -> dict[str, Any]:
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping of JSON values, got {type(config).__name__}")
    data = dict(config)
    json.dumps(data)  # a value that JSON cannot hold fails here, before anything is written
    return data


#: Configs as plain dicts: what a store without another format gives.
JSON_OBJECT = ConfigFormat(to_json=_json_object, from_json=dict)
