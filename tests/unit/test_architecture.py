"""The import rules of docs/architecture.md, checked on the source: each layer of mist_core
imports only from its own layer and those below it; the leaves import nothing else from
mist_core; no module imports Streamlit.

Imports are read with ``ast`` (module level and inside functions; ``if TYPE_CHECKING:``
blocks are left out, they never run). ``mist_core/__init__.py`` is the public facade over
every layer and is not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Bottom to top. A module belongs to the entry with the longest matching prefix.
LAYERS: tuple[tuple[str, ...], ...] = (
    # 0: leaves, importing nothing else from mist_core
    (
        "mist_core._rng",
        "mist_core._validation",
        "mist_core.nn",
        "mist_core.freeze",
        "mist_core.precision",
        "mist_core.devices",
        "mist_core.machine",
        "mist_core.results",
        "mist_core.reliability",
        "mist_core.runs",
        "mist_core.data.landmarks",
        "mist_core.data.stopping",
    ),
    # 1: densities, estimators, images and encoders
    (
        "mist_core.distributions",
        "mist_core.estimators",
        "mist_core.marginals",
        "mist_core.data",
        "mist_core.encoders",
        "mist_core.photos",
    ),
    # 2: training
    ("mist_core.distributed", "mist_core.training"),
    # 3: the landmark experiment
    ("mist_core.experiment",),
    # 4: what uses an experiment
    (
        "mist_core.checkpoints",
        "mist_core.posterior",
        "mist_core.reference",
        "mist_core.calibration",
        "mist_core.resources",
        "mist_core.comparison",
    ),
    # 5: running it
    (
        "mist_core.jobs",
        "mist_core.cli",
        "mist_core.cli_samples",
        "mist_core.cli_text",
        "mist_core.__main__",
    ),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer_entry(module: str) -> tuple[int, str]:
    best: tuple[int, str] | None = None
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > len(best[1])
            ):
                best = (index, prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and the picture")
    return best


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> list[str]:
    """Absolute names of the modules ``path`` imports (``from a import b`` -> a and a.b)."""
    me = _module_name(path)
    package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                stem = package[: len(package) - node.level + 1]
                base = ".".join([*stem, base] if base else stem)
            found.append(base)
            found.extend(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _mist_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / "mist_core").rglob("*.py"))}


MODULES = _mist_modules()
CHECKED = sorted(name for name in MODULES if name != "mist_core")


def _targets(name: str) -> set[str]:
    """The mist_core modules ``name`` imports (names that are not modules are dropped)."""
    return {t for t in _imports(MODULES[name]) if t in MODULES and t != "mist_core"}


def _violations(name: str, targets: set[str]) -> list[str]:
    """What breaks the rules when module ``name`` imports ``targets``."""
    layer, prefix = _layer_entry(name)
    found = []
    for target in sorted(targets):
        target_layer, target_prefix = _layer_entry(target)
        if layer == 0 and target_prefix != prefix:
            found.append(f"{name} is a leaf but imports {target}")
        elif target_layer > layer:
            found.append(
                f"{name} (layer {layer}) imports {target} (layer {target_layer}): "
                "imports go down the layers only (docs/architecture.md)"
            )
    return found


@pytest.mark.parametrize("name", CHECKED)
def test_imports_go_down_the_layers(name):
    assert _violations(name, _targets(name)) == []


def test_the_rule_checker_sees_violations():
    assert _violations("mist_core.runs.store", {"mist_core.experiment.config"})
    assert _violations("mist_core.training.loop", {"mist_core.jobs.job"})
    assert _violations("mist_core.data.features", {"mist_core.experiment"})
    assert not _violations("mist_core.jobs.job", {"mist_core.training.loop", "mist_core.runs"})
    assert not _violations("mist_core.runs.store", {"mist_core.runs.run"})


def test_the_layers_name_only_modules_that_exist():
    prefixes = [prefix for layer in LAYERS for prefix in layer]
    for prefix in prefixes:
        assert any(m == prefix or m.startswith(prefix + ".") for m in MODULES), prefix


def test_no_module_imports_streamlit():
    for name, path in MODULES.items():
        assert not any(t.split(".")[0] == "streamlit" for t in _imports(path)), name


def test_docs_picture_lists_every_layer():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for layer in LAYERS:
        for prefix in layer:
            shown = prefix.removeprefix("mist_core.")
            assert shown in text, f"docs/architecture.md does not mention {shown}"
