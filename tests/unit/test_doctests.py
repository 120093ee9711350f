"""The runnable examples in mist_core's docstrings, run as tests.

Every module of the package is searched except ``mist_core.__main__`` (importing it runs
the command line). The public entry points a newcomer starts from must carry an example.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import mist_core

#: Entry points whose docstring must hold at least one example, by their public name.
MUST_HAVE_EXAMPLES = (
    "estimate_mi",
    "transformed_normal",
    "conditional_transformed_normal",
    "DoE",
    "posterior_maps",
    "LandmarkExperiment",
)


def _modules() -> list[str]:
    names = [mist_core.__name__]
    for info in pkgutil.walk_packages(mist_core.__path__, prefix=f"{mist_core.__name__}."):
        if info.name != "mist_core.__main__":
            names.append(info.name)
    return sorted(names)


def _examples(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [test for test in finder.find(module) if test.examples]


_ALL = [(name, test) for name in _modules() for test in _examples(name)]


@pytest.mark.parametrize(("module_name", "test"), _ALL, ids=[t.name for _, t in _ALL])
def test_docstring_example(module_name, test):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, clear_globs=True)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{test.name} ({module_name}): {result.failed} example(s) failed"


@pytest.mark.parametrize("name", MUST_HAVE_EXAMPLES)
def test_public_entry_point_has_an_example(name):
    obj = getattr(mist_core, name, None)
    if obj is None:  # posterior_maps is public in its own module
        obj = getattr(importlib.import_module("mist_core.posterior"), name)
    tests = doctest.DocTestFinder(recurse=False).find(obj, name)
    assert any(t.examples for t in tests), f"{name}'s docstring has no runnable example"
