"""The layers of the package (docs/architecture.md), checked from the code's own imports: no module imports from
a layer above its own. Function-level imports count too: a lazy import is still a dependency."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "assistant"

# Bottom first. A module may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, set[str]]] = [
    ("vocabulary", {"domain", "procs", "prompts", "__init__"}),   # standard library only (prompts: files)
    ("storage", {"store"}),
    ("services", {"config", "access", "ownership", "llm", "sandbox", "egress"}),
    ("agent", {"agent"}),
    ("notifications", {"notify"}),
    ("jobs", {"jobs"}),
    ("conversation", {"conversation"}),
    ("composition", {"core", "retention", "doctor"}),
    ("adapters", {"cli", "serve", "app", "web", "testing"}),
]
LEVEL = {unit: level for level, (_name, units) in enumerate(LAYERS) for unit in units}
# Imports of nothing of the package at all: the shared vocabulary, and the code that runs inside the sandbox.
SELF_CONTAINED = ("domain", "sandbox/guest")


def unit_of(module: str) -> str | None:
    """'assistant.jobs.runner' -> 'jobs'; 'assistant' -> '__init__'; a module outside the package -> None."""
    parts = module.split(".")
    if parts[0] != "assistant":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> set[str]:
    """The package modules a file imports, relative imports resolved."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(rel.parts[:-1])  # for __init__.py too: its package is its folder
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module or "")
    return found


def package_files():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    units = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in package_files()}
    assert units - set(LEVEL) == set(), "give these a layer in LAYERS (and docs/architecture.md)"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for path in package_files():
        unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for module in imports(path):
            target = unit_of(module)
            if target is not None and target in LEVEL and LEVEL[target] > LEVEL[unit]:
                upward.append(f"{path.relative_to(PACKAGE)} ({LAYERS[LEVEL[unit]][0]}) imports {module} "
                              f"({LAYERS[LEVEL[target]][0]})")
    assert upward == [], "imports from a higher layer:\n" + "\n".join(upward)


def test_the_vocabulary_and_the_guest_code_import_nothing_of_the_package():
    found = []
    for place in SELF_CONTAINED:
        for path in sorted((PACKAGE / place).rglob("*.py")):
            inside = f"assistant.{place.replace('/', '.')}"
            found += [f"{path.relative_to(PACKAGE)} imports {module}" for module in imports(path)
                      if unit_of(module) is not None and not module.startswith(inside)]
    assert found == []


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check above can fail: a store module that reached up into jobs would be reported."""
    probe = PACKAGE / "store" / "store.py"
    assert any(unit_of(m) == "domain" for m in imports(probe))  # relative imports are resolved
    assert LEVEL["jobs"] > LEVEL["store"] and unit_of("assistant.jobs.runner") == "jobs"
