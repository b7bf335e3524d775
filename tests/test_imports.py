"""The library's modules import one another without cycles (module-level and function-level
imports both count)."""

from __future__ import annotations

import ast
from pathlib import Path

import maskshare

SRC = Path(maskshare.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """maskshare modules that `path` (module `name`) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[:len(up) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in out if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, m, set(mods)) for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_function_level_and_relative_imports():
    g = import_graph()
    assert "maskshare.model.activations" in g["maskshare.masks.slot_stats"]
    # sae_quality imports maskshare.model.models inside a function
    assert "maskshare.model.models" in g["maskshare.saes.quality"]
    assert "maskshare.datasets.spec" in g["maskshare.datasets.build"]


def test_no_import_cycle_among_maskshare_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)



def _function_level_own_imports() -> list[tuple[str, int, str]]:
    """(module, line, the import and the comment above or beside it) of every import of a
    maskshare module inside a function."""
    out = []
    for name, path in _modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("maskshare"):
                    above = [ln.strip() for ln in lines[:node.lineno - 1]][::-1]
                    comment = next((ln for ln in above if not ln.startswith(("from ", "import "))),
                                   "")
                    out.append((name, node.lineno, lines[node.lineno - 1] + " | " + comment))
    return out


def test_few_imports_of_the_package_hide_inside_functions_and_each_says_why():
    found = _function_level_own_imports()
    assert len(found) <= 30, "\n".join(f"{m}:{n}" for m, n, _ in found)
    unexplained = [f"{m}:{n}" for m, n, text in found if "#" not in text]
    assert not unexplained, unexplained


def _outside_imports() -> list[tuple[str, int, str, str]]:
    """(file, line, module, name) of every `from maskshare... import name` in the scripts,
    benchmarks, flows and tests: code outside the package that no package test imports."""
    root = SRC.parent.parent
    out = []
    for folder in ("benchmarks", "scripts", "flows", "tests"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.ImportFrom) and not node.level
                        and (node.module or "").split(".")[0] == "maskshare"):
                    rel = str(path.relative_to(root))
                    out += [(rel, node.lineno, node.module, a.name) for a in node.names]
    return out


def test_every_import_of_the_package_outside_it_resolves():
    """A module moved or a name renamed must not leave a benchmark or script importing the
    old path (benchmarks run by hand, not by the suite)."""
    import importlib
    import importlib.util

    found = _outside_imports()
    assert any(f.startswith("benchmarks/") for f, *_ in found)
    broken = []
    for file, line, module, name in found:
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            broken.append(f"{file}:{line}: {module} ({e})")
            continue
        if not hasattr(mod, name) and importlib.util.find_spec(f"{module}.{name}") is None:
            broken.append(f"{file}:{line}: {module}.{name}")
    assert not broken, "\n".join(broken)
