"""The fault-injection suite: each test tries one kind of fault (a repro from issue 13) many
times and says how many cases held.

Run it alone with ``.venv/bin/python -m pytest tests/faults -s`` (``-s`` shows the counts).
"""

from __future__ import annotations


def pytest_configure(config):
    # Registered here so that --strict-markers accepts it without touching pyproject.toml.
    config.addinivalue_line("markers", "faults: fault-injection test (tests/faults)")


def pytest_collection_modifyitems(items):
    import pytest

    for item in items:
        if "tests/faults/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.faults)
