"""Plugins import only the core's stable surface.

docs/plugin-guide.md, section "What a plugin may import", lists the core
modules a plugin may import; everything else in ``pacscore`` is internal
and moves without notice.  The list in the guide is the one checked here:
the bundled plugins and the example plugin (their code, not their tests)
and the guide's own examples import nothing else, and every module listed
exists.  Adding a module to the surface is a deliberate act: a line in
the guide.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugin-guide.md"
SECTION = "## What a plugin may import"
PLUGIN_PACKAGES = sorted(
    [*(ROOT / "plugins").glob("*/pacscore_*"), ROOT / "docs" / "example-plugin" / "pacscore_hello"]
)


def guide_section(text: str) -> str:
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end != -1 else None]


def surface(text: str | None = None) -> set[str]:
    """The modules named at the head of the section's bullets:
    ``- `pacscore.x`, `pacscore.y`: what for``."""
    modules: set[str] = set()
    section = guide_section(GUIDE.read_text() if text is None else text)
    # a bullet and its indented continuation lines, as one line
    for bullet in re.findall(r"^- .*(?:\n  .*)*", section, re.MULTILINE):
        head = re.match(r"- ((?:`pacscore[\w.]*`(?:, | and )?)+):", " ".join(bullet.split()))
        if head:
            modules.update(re.findall(r"`(pacscore[\w.]*)`", head.group(1)))
    return modules


@dataclass(frozen=True)
class CoreImport:
    where: str  # file:line
    module: str  # the core module imported

    def __str__(self) -> str:
        return f"{self.where} imports {self.module}"


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def core_imports(source: str, where: str) -> list[CoreImport]:
    """The ``pacscore`` modules that ``source`` imports (``from pacscore import
    worklist`` imports the module ``pacscore.worklist``; ``from pacscore.db import
    connection`` the module ``pacscore.db``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "pacscore":
                submodules = [f"pacscore.{a.name}" for a in node.names]
                names = [n for n in submodules if _is_module(n)] or names
                if len(names) < len(node.names) and names != ["pacscore"]:
                    names.append("pacscore")  # and names of the package itself
        else:
            continue
        for name in names:
            if name == "pacscore" or name.startswith("pacscore."):
                found.append(CoreImport(f"{where}:{node.lineno}", name))
    return found


def outside(imports: list[CoreImport], allowed: set[str]) -> list[str]:
    return [str(i) for i in imports if i.module not in allowed]


def plugin_sources() -> list[Path]:
    return sorted(
        path
        for package in PLUGIN_PACKAGES
        for path in package.rglob("*.py")
        if "tests" not in path.relative_to(package).parts
    )


def test_every_plugin_package_is_scanned():
    names = {path.parent.name for path in plugin_sources()}
    bundled = {"pacscore_apicrypt", "pacscore_email", "pacscore_hl7", "pacscore_ldap_auth",
               "pacscore_purge", "pacscore_router", "pacscore_hello"}  # fmt: skip
    assert bundled <= names


def test_the_guide_lists_existing_modules():
    modules = surface()
    assert {"pacscore", "pacscore.db", "pacscore.models", "pacscore.testing"} <= modules
    missing = sorted(m for m in modules if not _is_module(m))
    assert missing == [], f"{GUIDE.name} lists modules that do not exist"


def test_bundled_plugins_import_only_the_surface():
    allowed = surface()
    offenders = []
    for path in plugin_sources():
        where = str(path.relative_to(ROOT))
        offenders += outside(core_imports(path.read_text(), where), allowed)
    assert offenders == [], (
        "a plugin imports a core module outside the surface of "
        f"{GUIDE.name} ('{SECTION[3:]}'): give it an API there, or add the module "
        "to the list on purpose\n" + "\n".join(offenders)
    )


def test_the_guides_examples_import_only_the_surface():
    allowed = surface()
    text = GUIDE.read_text()
    offenders = []
    for number, block in enumerate(re.findall(r"```python\n(.*?)```", text, re.DOTALL)):
        offenders += outside(core_imports(block, f"{GUIDE.name} python block {number}"), allowed)
    assert offenders == []


def core_alert_kinds() -> set[str]:
    """The kinds of the alerts the core raises: ``pacs.alert("kind", ...)``."""
    kinds = set()
    for path in (ROOT / "pacscore").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "alert"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                kinds.add(node.args[0].value)
    return kinds


def test_on_alert_names_every_kind_the_core_raises():
    """A plugin mailing alerts (the bundled email plugin) learns the kinds there."""
    from pacscore.hookspecs import on_alert

    kinds = core_alert_kinds()
    assert {"storage_full", "low_disk_space", "file_save_error", "storage_unavailable"} <= kinds
    row = next(line for line in GUIDE.read_text().splitlines() if line.startswith("| `on_alert`"))
    for kind in sorted(kinds):
        assert f"``{kind}``" in on_alert.__doc__, f"on_alert's docstring omits {kind}"
        assert f"`{kind}`" in row, f"the guide's on_alert row omits {kind}"


# -- the check itself ------------------------------------------------------------------------


SAMPLE = """
from pacscore import hookimpl, worklist as wl
from pacscore.db import connection
import pacscore.storage
from pacscore.dicom import header
from pacscore_mine import helpers
from . import local

def later():
    from pacscore.sql import insert
"""


def test_imports_are_resolved_to_the_module_they_load():
    found = {(i.module, int(i.where.rsplit(":", 1)[1])) for i in core_imports(SAMPLE, "x.py")}
    assert found == {
        ("pacscore.worklist", 2),
        ("pacscore", 2),
        ("pacscore.db", 3),
        ("pacscore.storage", 4),
        ("pacscore.dicom", 5),  # `header` is no longer a module of the network package
        ("pacscore.sql", 10),  # imported in a function: still an import
    }


def test_a_module_outside_the_surface_is_reported():
    allowed = {"pacscore", "pacscore.db", "pacscore.worklist"}
    assert outside(core_imports(SAMPLE, "x.py"), allowed) == [
        "x.py:4 imports pacscore.storage",
        "x.py:5 imports pacscore.dicom",
        "x.py:10 imports pacscore.sql",
    ]


@pytest.mark.parametrize(
    ("bullet", "modules"),
    [
        ("- `pacscore.db`: connection()", {"pacscore.db"}),
        ("- `pacscore.web.common`, `pacscore.web.menu` and\n  `pacscore.web.security`: pages",
         {"pacscore.web.common", "pacscore.web.menu", "pacscore.web.security"}),
        ("- not `pacscore.sql`: a bullet that does not start with the module", set()),
    ],
)  # fmt: skip
def test_the_surface_is_read_from_the_bullets_of_the_section(bullet, modules):
    intro = "Not listed: `pacscore.storage`."
    text = f"# Guide\n\n{SECTION}\n\n{intro}\n\n{bullet}\n\n## Next\n\n- `pacscore.x`: no"
    assert surface(text) == modules
