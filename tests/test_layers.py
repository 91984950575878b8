"""The walls between the core's layers, checked on the source (no import is run).

docs/architecture.md draws them: the core names no plugin and defines no
plugin's table; the DICOM format layer knows no network; archive and storage
know no network either; the network services know no web; the service layer
knows no web and the database plumbing no table; nothing in the core
imports itself in a circle at module level; and only the pynetdicom extensions
package changes pynetdicom.  Each rule lists what breaks it, so a failure says
which file and line to look at.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "pacscore"
PLUGINS = ROOT / "plugins"
EXTENSIONS_PACKAGE = "pacscore.dicom.pynetdicom_ext"
FORMAT_PACKAGE = "pacscore.dicomfile"
NETWORK_PACKAGE = "pacscore.dicom"
WEB_PACKAGE = "pacscore.web"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (or module.name for ``from m import name``)
    line: int
    module_level: bool  # run at import time (not in a function, not under TYPE_CHECKING)

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(top: Path) -> list[Path]:
    return sorted(p for p in top.rglob("*.py") if "tests" not in p.relative_to(top).parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, root: Path) -> list[Import]:
    module = module_name(path, root)
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(nodes: list[ast.stmt], module_level: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend(Import(module, a.name, node.lineno, module_level) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                found.append(Import(module, base, node.lineno, module_level))
                found.extend(
                    Import(module, f"{base}.{a.name}", node.lineno, module_level)
                    for a in node.names
                )
            elif isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.body, False)
                visit(node.orelse, module_level)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(list(ast.walk(node))[1:], False)
            elif isinstance(node, ast.ClassDef | ast.If | ast.Try | ast.With | ast.For):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, field, [])
                    for child in children:
                        if isinstance(child, ast.ExceptHandler):
                            visit(child.body, module_level)
                        else:
                            visit([child], module_level)

    visit(ast.parse(path.read_text(), str(path)).body, True)
    return found


def core_imports() -> list[Import]:
    return [i for path in source_files(CORE) for i in imports_of(path, ROOT)]


def core_modules() -> set[str]:
    return {module_name(path, ROOT) for path in source_files(CORE)}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def breaking(imports: list[Import], importer: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        {
            str(i)
            for i in imports
            if within(i.module, importer) and any(within(i.target, f) for f in forbidden)
        }
    )


def test_the_core_imports_no_plugin() -> None:
    plugin_packages = tuple(
        p.name for p in PLUGINS.glob("*/pacscore_*") if (p / "__init__.py").exists()
    )
    assert plugin_packages, "no bundled plugin found: the rule would check nothing"
    offenders = sorted(
        str(i) for i in core_imports() if i.target.split(".")[0].startswith("pacscore_")
    )
    assert not offenders, "the core names plugins:\n" + "\n".join(offenders)


def test_the_core_defines_only_tables_it_uses() -> None:
    """A table the core defines is one the core reads or writes: a table that only
    plugins use belongs to a plugin (the ``database_models`` hook)."""
    models = CORE / "models.py"
    tree = ast.parse(models.read_text())
    tables = [
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any(isinstance(b, ast.Name) and b.id == "BaseModel" for b in node.bases)
    ]
    assert tables, "no table found in pacscore/models.py: the rule would check nothing"
    users = {path: path.read_text() for path in source_files(CORE) if path != models}
    unused = [
        name
        for name in tables
        if not any(name in {n.id for n in _names(text)} for text in users.values())
    ]
    assert not unused, "tables in pacscore/models.py that no core module uses: " + ", ".join(unused)


def _names(text: str) -> list[ast.Name]:
    return [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Name)]


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        (NETWORK_PACKAGE, (WEB_PACKAGE, "flask", "waitress")),
        ("pacscore.archive", ("pynetdicom", NETWORK_PACKAGE, WEB_PACKAGE)),
        ("pacscore.storage", ("pynetdicom", NETWORK_PACKAGE, WEB_PACKAGE)),
        (FORMAT_PACKAGE, ("pynetdicom", NETWORK_PACKAGE, WEB_PACKAGE, "pacscore.archive")),
        ("pacscore.models", ("pynetdicom", NETWORK_PACKAGE, WEB_PACKAGE, "pacscore.archive")),
        ("pacscore.db", ("pacscore.models", "pacscore.app", "pacscore.archive", NETWORK_PACKAGE)),
        ("pacscore.services", ("flask", WEB_PACKAGE)),
    ],
)
def test_a_layer_does_not_import_the_layers_above(layer: str, forbidden: tuple[str, ...]) -> None:
    offenders = breaking(core_imports(), layer, forbidden)
    assert not offenders, f"{layer} imports a layer above it:\n" + "\n".join(offenders)
    assert any(within(m, layer) for m in core_modules()), f"{layer} does not exist"


def test_no_module_level_import_cycle_in_the_core() -> None:
    modules = core_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for i in core_imports():
        if not i.module_level:
            continue
        target = i.target if i.target in modules else i.target.rpartition(".")[0]
        if target in modules and target != i.module and not within(i.module, target):
            graph[i.module].add(target)
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, "modules that import each other at import time: " + repr(cycles)


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph is small, but recursion depth is not ours)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def rebindings_of_pynetdicom(path: Path, root: Path) -> list[str]:
    """Assignments to an attribute of something imported from pynetdicom
    (``pynetdicom.dul.X.f = ...``, ``DULServiceProvider.f = ...``, ``setattr(dul, ...)``)."""
    tree = ast.parse(path.read_text())
    from_pynetdicom: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            from_pynetdicom |= {
                (a.asname or a.name).split(".")[0]
                for a in node.names
                if within(a.name, "pynetdicom")
            }
        elif isinstance(node, ast.ImportFrom) and within(node.module or "", "pynetdicom"):
            from_pynetdicom |= {a.asname or a.name for a in node.names}

    def base(node: ast.expr) -> str | None:
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("setattr", "delattr")
            and node.args
            and base(node.args[0]) in from_pynetdicom
        ):
            found.append(f"{module_name(path, root)}:{node.lineno}")
        found += [
            f"{module_name(path, root)}:{node.lineno}"
            for t in targets
            if isinstance(t, ast.Attribute) and base(t) in from_pynetdicom
        ]
    return found


def test_only_the_extensions_package_changes_pynetdicom() -> None:
    extensions = [
        path for path in source_files(CORE) if within(module_name(path, ROOT), EXTENSIONS_PACKAGE)
    ]
    outside = [
        place
        for top, root in ((CORE, ROOT), *((p, p) for p in PLUGINS.iterdir() if p.is_dir()))
        for path in source_files(top)
        if not within(module_name(path, root), EXTENSIONS_PACKAGE)
        for place in rebindings_of_pynetdicom(path, root)
    ]
    assert not outside, f"pynetdicom changed outside {EXTENSIONS_PACKAGE}:\n" + "\n".join(outside)
    assert extensions, f"{EXTENSIONS_PACKAGE} does not exist"
    assert any(rebindings_of_pynetdicom(p, ROOT) for p in extensions), (
        "the scan finds no rebinding even in the extensions: it would check nothing"
    )
