"""Keep the server's start-up objects out of Python's full garbage collections.

Streamlit runs ``gc.collect(2)`` after every script run (``runner.postScriptGC``), and the
Train page's live view reruns every few seconds while a training runs. A full collection
walks every object the collector tracks: about 420,000 once torch, torchvision, plotly,
pandas and ``mist_core`` are imported, 0.26-0.42 s a collection on a 2-core AMD EPYC, all of
it holding the GIL that the training thread needs between its tensor operations. With a
redraw every second the dashboard's demo took 120.6-168.7 s from Start to finished (4 runs)
without the freeze below and 86.7-107.6 s (3 runs) with it (``bench.dashboard_demo``, 2-core
AMD EPYC; the CLI takes 84-111 s).

:func:`freeze_startup_objects` imports the dashboard's modules (so the libraries they import
are loaded too), collects once, and moves every object alive then to the collector's
permanent generation (:func:`gc.freeze`), which later collections skip. It does so once per
process, before any page has run: what it freezes is modules, classes and functions that
live as long as the server. Objects frozen are still freed by reference counting; only
reference cycles among them would never be collected, which is why it never freezes later
(when trained models and sessions, often cyclic, are alive).
"""

from __future__ import annotations

import gc
import importlib
import pkgutil
import threading

__all__ = ["freeze_startup_objects"]

_lock = threading.Lock()
_frozen = False


def freeze_startup_objects() -> bool:
    """The first call in a process imports every module of the ``ui`` package, collects, and
    freezes what is alive; later calls do nothing. Returns whether this call froze."""
    global _frozen
    with _lock:
        if _frozen:
            return False
        package = importlib.import_module(__package__)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{__package__}.{module.name}")
        gc.collect(2)
        gc.freeze()
        _frozen = True
        return True
