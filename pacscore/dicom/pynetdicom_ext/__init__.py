"""pacscore's extensions of pynetdicom, installed in order by one registry, for the
pynetdicom versions they were tested with only.

Each module of this package changes one behaviour of pynetdicom (see
docs/architecture.md, "Small pynetdicom extensions"); it has one ``install()``
and lists in ``UPSTREAM`` the pynetdicom definitions it replaces, wraps or relies
on, each with the SHA-256 of its source as written in the tested version
(:func:`upstream_source`).  Nothing else in pacscore rebinds a pynetdicom
attribute (tests/test_layers.py checks it).

:func:`install_all` (the listener) and :func:`install_client` (pacscore as a
client: ``scu.client_ae``) install the extensions of :data:`EXTENSIONS` in that
order, each once per process, after :func:`require_tested_pynetdicom`: with a
pynetdicom outside :data:`TESTED_PYNETDICOM` they raise
:class:`UnsupportedPynetdicom` and install nothing, so a ``pip install -U``
cannot silently disable or break a patch.  Trying another version on purpose:
``PACSCORE_ALLOW_PYNETDICOM=<that version>``; upgrading for good: see the
architecture document (``python -m pacscore.dicom.pynetdicom_ext`` lists the
upstream definitions that changed).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# the versions the extensions and their tests ran against (setup.cfg pins the same)
TESTED_PYNETDICOM = ("3.0.4",)
# set to the installed version to run an untested pynetdicom deliberately
ALLOW_UNTESTED = "PACSCORE_ALLOW_PYNETDICOM"


class UnsupportedPynetdicom(RuntimeError):
    """The installed pynetdicom is not a version the extensions were tested with."""


@dataclass(frozen=True)
class Extension:
    name: str  # its module in this package
    client: bool = False  # pacscore as a client needs it too (scu.client_ae)
    # applied at every install (a setting that follows the moment's log level),
    # not once per process
    each_time: bool = False


# the order of installation, the listener's since these were written (where two wrap
# one function, e.g. AssociationServer.get_request by nodelay then shared_listener,
# the later one's wrapper runs first)
EXTENSIONS = (
    Extension("access"),  # node rights before Query/Retrieve, Worklist, MPPS handlers
    Extension("rawsend", client=True),  # stored instances sent byte for byte
    Extension("nodelay", client=True),  # TCP_NODELAY on every DICOM socket
    Extension("shared_listener"),  # one listening socket for every listener process
    Extension("shared_contexts"),  # no deep copy of the contexts per association
    Extension("dul_guard", client=True),  # gone or stalled peers, bounded PDU reads
    Extension("reactor_waits"),  # blocking waits instead of 1 ms polling
    Extension("reply_race", client=True),  # no reply lost to the reactor during a send
    Extension("command_sets", client=True),  # command sets without pydicom's writer
    Extension("lean_send", client=True),  # a DIMSE message sent in one write
    Extension("lean_store"),  # C-STORE read and answered in the DUL thread
    Extension("log_identifiers", each_time=True),  # identifiers formatted for DEBUG only
)
_SERVER = EXTENSIONS
_SERVER_WITHOUT_LEAN_STORE = tuple(e for e in EXTENSIONS if e.name != "lean_store")
_CLIENT = tuple(e for e in EXTENSIONS if e.client)

_lock = threading.Lock()
_installed: set[str] = set()
_allowed_untested: set[str] = set()


def install_all(lean_store: bool = True) -> None:
    """Every extension, for the listener (``lean_store``: the lean C-STORE path,
    ``lean_store`` in pacscore.toml).  UnsupportedPynetdicom if not a tested version."""
    _install(_SERVER if lean_store else _SERVER_WITHOUT_LEAN_STORE)


def install_client() -> None:
    """The extensions pacscore needs as a client (C-ECHO, C-FIND, C-MOVE, C-STORE
    to other nodes).  UnsupportedPynetdicom if not a tested version."""
    _install(_CLIENT)


def _install(extensions: tuple[Extension, ...]) -> None:
    with _lock:  # two threads installing at once would wrap a function twice
        require_tested_pynetdicom()
        for extension in extensions:
            if extension.each_time or extension.name not in _installed:
                module(extension).install()
                _installed.add(extension.name)


def installed() -> frozenset[str]:
    """The names of the extensions installed in this process."""
    return frozenset(_installed)


def require_tested_pynetdicom() -> None:
    """UnsupportedPynetdicom unless the installed pynetdicom is a tested version, or
    the one named by ``PACSCORE_ALLOW_PYNETDICOM`` (a deliberate trial: warned once)."""
    import pynetdicom

    version = pynetdicom.__version__
    if version in TESTED_PYNETDICOM:
        return
    if os.environ.get(ALLOW_UNTESTED, "").strip() == version:
        if version not in _allowed_untested:
            _allowed_untested.add(version)
            log.warning(
                "pynetdicom %s is not a version pacscore's extensions were tested with (%s): "
                "running it because %s says so",
                version, ", ".join(TESTED_PYNETDICOM), ALLOW_UNTESTED,
            )  # fmt: skip
        return
    raise UnsupportedPynetdicom(
        f"pacscore's pynetdicom extensions were tested with {', '.join(TESTED_PYNETDICOM)}; "
        f"installed {version}: install a tested version "
        f"(pip install 'pynetdicom=={TESTED_PYNETDICOM[-1]}'), or set "
        f"{ALLOW_UNTESTED}={version} to try this one deliberately "
        "(docs/architecture.md, Small pynetdicom extensions)"
    )


def module(extension: Extension) -> ModuleType:
    return importlib.import_module(f"{__name__}.{extension.name}")


def per_association(assoc: Any, name: str, factory: Callable[[], T]) -> T:
    """The object ``name`` that the extensions keep on a pynetdicom association,
    created on first use (``setdefault``: two threads asking first get the same one)."""
    value = assoc.__dict__.get(name)
    if value is None:
        value = assoc.__dict__.setdefault(name, factory())
    return value


# -- what the extensions rely on upstream ---------------------------------------------


def upstream_targets() -> Iterator[tuple[str, str, str]]:
    """(extension, upstream definition, recorded SHA-256) of every extension."""
    for extension in EXTENSIONS:
        for target, digest in module(extension).UPSTREAM.items():
            yield extension.name, target, digest


def upstream_source(target: str) -> str:
    """The source of ``target`` (``pynetdicom.dul.DULServiceProvider.receive_pdu``) as
    written in the installed file: ``inspect.getsource`` of the definition, found by
    name in the module's source, so that our own replacement is never what is read.
    Several definitions of one name (a property and its setter) are joined.
    LookupError if the module or the name is gone."""
    parts = target.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            mod = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        text = inspect.getsource(mod)
        return _definition(text, ast.parse(text).body, parts[split:], target)
    raise LookupError(f"{target}: no such module")


def upstream_digest(target: str) -> str:
    return hashlib.sha256(upstream_source(target).encode()).hexdigest()


def _definition(text: str, body: list[ast.stmt], path: list[str], target: str) -> str:
    nodes: list[ast.stmt] = []
    for depth, name in enumerate(path):
        nodes = [node for node in body if name in _names_defined(node)]
        if not nodes:
            raise LookupError(f"{target}: {name} is not defined there")
        if depth < len(path) - 1:
            body = nodes[-1].body if isinstance(nodes[-1], ast.ClassDef) else []
    lines = text.splitlines(keepends=True)
    return "".join("".join(lines[_first_line(node) - 1 : node.end_lineno]) for node in nodes)


def _names_defined(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()


def _first_line(node: ast.stmt) -> int:
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def changed_upstream(targets: Iterable[tuple[str, str, str]]) -> list[str]:
    """One line per upstream definition of ``targets`` (who relies on it, definition,
    recorded SHA-256) that differs from its recorded digest."""
    lines = []
    for name, target, recorded in targets:
        try:
            digest = upstream_digest(target)
        except LookupError as exc:
            lines.append(f"{name}: {exc}")
            continue
        if digest != recorded:
            lines.append(f"{name}: {target} changed: now {digest}")
    return lines
