"""One direction of imports: weight_conversion is a leaf (nothing of jaxdissect, save its command
line), the project's own modules import each other without cycles, and they do so at module
level (no function-local imports hiding an edge).

The graph is read from the source with `ast` (nothing is imported): every `import` and
`from ... import` statement, at module level or inside functions, classes and `if` blocks,
between modules of jaxdissect/ and weight_conversion/. `from pkg import name` points at the
submodule pkg.name when there is one, else at pkg itself; relative imports are resolved against
the importing module's package. Importing a submodule is not counted as importing its parent
packages' __init__ (every submodule would then form a cycle with a re-exporting __init__).
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("jaxdissect", "weight_conversion")
# The one module of weight_conversion allowed to import jaxdissect: the command line, a thin shell
# over jaxdissect.models (conversion of a registered model needs the model registry).
LEAF_EXEMPT = {"weight_conversion.__main__"}
# Import cycles tolerated, each with its reason. Empty: every cycle is a defect.
ALLOWED_CYCLES: set[frozenset[str]] = set()


def module_files() -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every .py under the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module named by `from <level dots><name> import ...` inside `module`."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[:-(level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str, path: pathlib.Path, modules: set[str]) -> set[str]:
    """The project modules `module` imports anywhere in its file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = set()

    def project_module(name: str) -> str | None:
        # `import a.b.c` where a.b.c is not a module (a name in a.b): the longest module prefix.
        parts = name.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in modules:
                return candidate
            parts.pop()
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = project_module(alias.name)
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(module, is_package, node.level, node.module) if node.level
                    else node.module or "")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if sub in modules else project_module(base)
                if target:
                    found.add(target)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    names = set(files)
    return {m: imports_of(m, p, names) for m, p in files.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components, iterative (no recursion limit)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                out.append(component)
    return out


# --- the checker itself, on hand-made cases -----------------------------------------------------

def test_tarjan_finds_cycles_and_only_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    big = sorted(sorted(c) for c in strongly_connected(graph) if len(c) > 1)
    assert big == [["a", "b", "c"], ["d", "e"]]
    assert sorted(len(c) for c in strongly_connected(graph)) == [1, 1, 2, 3]


def test_import_resolution(tmp_path):
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    source = ("import p.sub.leaf\n"
              "from p.sub import other, NAME\n"
              "from . import sibling\n"
              "from .sub.leaf import thing\n"
              "def f():\n    from ..q import x\n"
              "import numpy\n")
    (pkg / "sub" / "mod.py").write_text(source)
    modules = {"p", "p.sub", "p.sub.leaf", "p.sub.other", "p.sub.sibling", "p.sub.mod", "q"}
    assert imports_of("p.sub.mod", pkg / "sub" / "mod.py", modules) == {
        "p.sub.leaf", "p.sub.other", "p.sub", "p.sub.sibling", "p"}
    (pkg / "__init__.py").write_text("from .sub import mod\nfrom . import q\n")
    assert imports_of("p", pkg / "__init__.py", modules | {"p.q"}) == {"p.sub.mod", "p.q"}


def test_graph_sees_the_packages():
    graph = import_graph()
    assert "jaxdissect.models.loading" in graph and "weight_conversion.pth_reader" in graph
    # A known edge of each kind: module-level, and the command line's import of the models.
    assert "jaxdissect.models.registry" in graph["jaxdissect.models.vgg"]
    assert "jaxdissect.models.conversion" in graph["weight_conversion.__main__"]


# --- the rules -----------------------------------------------------------------------------------

def test_weight_conversion_imports_nothing_of_jaxdissect():
    graph = import_graph()
    offenders = {m: sorted(t for t in targets if t.split(".")[0] == "jaxdissect")
                 for m, targets in graph.items()
                 if m.split(".")[0] == "weight_conversion" and m not in LEAF_EXEMPT}
    offenders = {m: t for m, t in offenders.items() if t}
    assert not offenders, f"weight_conversion must be a leaf; these modules import jaxdissect: {offenders}"


def test_no_import_cycles():
    cycles = [c for c in strongly_connected(import_graph()) if len(c) > 1 and frozenset(c) not in ALLOWED_CYCLES]
    if cycles:
        graph = import_graph()
        lines = []
        for c in sorted(cycles, key=lambda c: sorted(c)):
            lines.append("cycle: " + ", ".join(sorted(c)))
            lines += [f"    {m} -> {', '.join(sorted(graph[m] & c))}" for m in sorted(c)]
        pytest.fail("import cycles among the project's modules:\n" + "\n".join(lines))


def local_project_imports(path: pathlib.Path, modules: set[str]) -> list[tuple[int, str]]:
    """(line, statement) of every import of a project module made inside a function or class body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
            if nested and isinstance(child, (ast.Import, ast.ImportFrom)):
                names = ([a.name for a in child.names] if isinstance(child, ast.Import)
                         else [child.module or ""] if not child.level else [PACKAGES[0]])
                if any(n.split(".")[0] in PACKAGES for n in names):
                    found.append((child.lineno, ast.unparse(child)))
            visit(child, inside)

    visit(tree, False)
    return found


def test_local_import_finder_on_a_hand_made_case(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import jaxdissect.stats\nimport numpy\n"
                    "def f():\n    import torch\n    from jaxdissect import parallel\n"
                    "class C:\n    def g(self):\n        from weight_conversion.cache import cache_dir\n")
    assert local_project_imports(path, set()) == [(5, "from jaxdissect import parallel"),
                                                  (8, "from weight_conversion.cache import cache_dir")]


def test_project_modules_are_imported_at_module_level():
    """Imports of the project's own modules sit at the top of each file, where a reader (and the
    graph above) sees them; function-local imports are for optional heavy dependencies only."""
    files = module_files()
    offenders = [f"{files[m].relative_to(ROOT)}:{line}: {stmt}" for m in sorted(files)
                 for line, stmt in local_project_imports(files[m], set(files))]
    assert not offenders, "function-local imports of the project's modules:\n" + "\n".join(offenders)
