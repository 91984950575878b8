"""The service layer (``pacscore.services``): one rule for the command line, the pages
and the API.

The command line used to check nodes, accounts and storage folders by hand,
less strictly than the console: what the console refuses, it now refuses
too, with a message and without a trace.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pacscore.app import open_pacs
from pacscore.db import connection
from pacscore.models import AuditEvent, Node, Storage, User
from tests.webclient import Console, add_user, web_app

SERVICES = Path(__file__).resolve().parent.parent / "pacscore" / "services"

# node add arguments the console's schema refuses: the command line accepted them
BAD_NODES = [
    ("backslash", "CT\\01", "h", "aet"),  # no '\' in an AE title
    ("nohost", "CT01", "", "host"),
    ("n" * 65, "CT01", "h", "name"),  # at most 64 characters
]


@pytest.fixture
def console(pacs_home):
    """The console and API of ``pacs_home``'s database, in this process."""
    pacs = open_pacs(pacs_home.home, load_plugins=False)
    add_user("root", "system administrator")
    console = Console(web_app(pacs))
    console.login("root")
    yield console
    pacs.database.close_all()


def test_the_command_line_refuses_the_nodes_the_console_refuses(pacs_home, console):
    for name, aet, host, field in BAD_NODES:
        args = ("node", "add", name, "--aet", aet, "--host", host, "--port", "104")
        result = pacs_home.cli(*args, check=False)
        assert result.returncode == 1, (name, result.stdout)
        assert result.stderr.startswith("error: invalid value:"), result.stderr
        assert f'"{field}"' in result.stderr and "Traceback" not in result.stderr
        body = {"name": name, "aet": aet, "host": host, "port": 104}
        answer = console.api("POST", "/api/v1/nodes", json=body)
        assert answer.status_code == 400 and field in answer.json["errors"], answer.json
    with connection():
        assert not Node.select().exists()
    assert pacs_home.cli("node", "list").stdout.strip() == "no node declared"


def test_the_command_line_refuses_the_accounts_and_folders_the_console_refuses(
    pacs_home, console, tmp_path
):
    for args, field in (
        (("user", "add", "two words", "--profile", "referring"), "login"),
        (("user", "add", "rad2", "--profile", "referring", "--email", "nowhere"), "email"),
        (("storage", "add", "big", str(tmp_path / "big"), "--min-free-mb", str(2**31)),
         "min_free_mb"),
    ):  # fmt: skip
        result = pacs_home.cli(*args, check=False, input="a long password\n")
        assert result.returncode == 1, (args, result.stdout)
        assert result.stderr.startswith("error: invalid value:"), result.stderr
        assert f'"{field}"' in result.stderr and "Traceback" not in result.stderr
    refused = console.api("POST", "/api/v1/users", json={
        "login": "two words", "profile": "referring", "password": "a long password"})  # fmt: skip
    assert refused.status_code == 400 and "login" in refused.json["errors"]
    with connection():
        assert not User.select().where(User.login.in_(["two words", "rad2"])).exists()
        assert [s.name for s in Storage.select()] == ["default"]


def test_the_same_change_is_audited_as_the_same_event(pacs_home, console):
    """The console and the API record one event per change (the API says "via"); the
    command line, run by the host's administrator, records none, as before."""
    form = {"name": "ct", "aet": "CT01", "host": "h", "port": "104", "allow_store": "on"}
    assert console.post("/nodes/new", form).status_code == 302
    node_id = console.api("GET", "/api/v1/nodes").json[0]["id"]
    changed = console.api("PATCH", f"/api/v1/nodes/{node_id}", json={"port": 105})
    assert changed.status_code == 200 and changed.json["port"] == 105
    pacs_home.cli("node", "add", "mr", "--aet", "MR01", "--host", "h", "--port", "104")
    with connection():
        events = [(e.actor, e.action, e.target, e.details) for e in AuditEvent.select()
                  .where(AuditEvent.action == "node_save").order_by(AuditEvent.id)]  # fmt: skip
    assert events == [
        ("root", "node_save", "ct", '{"created": true}'),
        ("root", "node_save", "ct", '{"created": false, "via": "api"}'),
    ]


def test_services_import_neither_flask_nor_the_web_layer():
    """The layer below the pages and the API: it answers with its own exceptions."""
    found = []
    for path in sorted(SERVICES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            found += [
                f"{path.name}:{node.lineno} imports {name}"
                for name in names
                if name.split(".")[0] in ("flask", "werkzeug") or name.startswith("pacscore.web")
            ]
    assert list(SERVICES.glob("*.py")) and not found, found
