"""The dashboard keeps its start-up objects out of the full collection Streamlit runs after
every script run (app/ui/garbage.py): 0.26-0.42 s of GIL each, every redraw of a training."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap

from app_helpers import APP_DIR, assert_no_exception, open_page

#: What a full collection walks once torch, plotly and pandas are imported: ~420,000 objects.
IMPORTED_OBJECTS = 100_000


def test_the_first_call_freezes_what_the_imports_made_and_later_calls_do_nothing():
    # a fresh process: freezing is once per process, and this one's tests have run already
    script = textwrap.dedent(
        f"""
        import gc, json, sys
        sys.path.insert(0, {str(APP_DIR)!r})
        from ui import garbage
        first = garbage.freeze_startup_objects()
        frozen = gc.get_freeze_count()
        walked = len(gc.get_objects())
        cycle = []
        cycle.append(cycle)  # made after the freeze: still collected
        del cycle
        collected = gc.collect(2)
        second = garbage.freeze_startup_objects()
        print(json.dumps(dict(first=first, second=second, frozen=frozen, walked=walked,
                              collected=collected, charts="ui.charts" in sys.modules,
                              plotly="plotly.graph_objects" in sys.modules)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["first"] is True and result["second"] is False
    assert result["charts"] and result["plotly"], "the pages' modules are imported first"
    assert result["frozen"] > IMPORTED_OBJECTS
    assert result["walked"] < IMPORTED_OBJECTS // 10, "a full collection still walks them"
    assert result["collected"] >= 1, "cycles made after the freeze are still collected"


def test_the_app_freezes_on_its_first_script_run(empty_runs):
    from ui import garbage  # the module object the app's scripts use

    at = open_page("train")
    assert_no_exception(at)
    assert garbage._frozen
    assert gc.get_freeze_count() > IMPORTED_OBJECTS
