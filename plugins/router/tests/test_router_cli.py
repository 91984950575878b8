"""The router through the CLI of a real home: a node with a preferred transfer
syntax, rules set and refused by ``pacscore plugins configure router``, and a
real ``pacscore serve`` routing what storescu sends."""

from __future__ import annotations

import json

from router_fixtures import wait_until

from pacscore.app import Pacs
from pacscore.config import Config
from pacscore.db import connection
from pacscore.models import Node
from tests.conftest import PacsProcess
from tests.dicomgen import dataset_bytes, make_instance


def test_node_preferred_ts_and_rules_through_the_cli(tmp_path):
    home = PacsProcess(tmp_path / "home", "sqlite:///index.db").init()
    home.cli("node", "add", "dest", "--aet", "DEST", "--host", "127.0.0.1", "--port", "104",
             "--preferred-ts", "ImplicitVRLittleEndian")  # fmt: skip
    home.cli("node", "add", "raw", "--aet", "RAW", "--host", "127.0.0.1", "--port", "105",
             "--preferred-ts", "1.2.840.10008.1.2.1")  # fmt: skip
    bad = home.cli("node", "add", "x", "--aet", "X", "--host", "h", "--port", "1",
                   "--preferred-ts", "JPEG 3000", check=False)  # fmt: skip
    assert bad.returncode == 1 and "unknown transfer syntax 'JPEG 3000'" in bad.stderr

    listing = home.cli("plugins", "list").stdout
    assert any(line.split("\t")[0] == "router" and line.endswith("loaded")
               for line in listing.splitlines()), listing  # fmt: skip

    nodes = home.cli("node", "list").stdout.splitlines()
    assert nodes[0] == "dest\tDEST\t127.0.0.1:104\tallow=store\tts=1.2.840.10008.1.2"

    rules = [{"name": "to-dest", "actions": [{"type": "PUSH", "node": "dest"}]}]
    shown = home.cli("plugins", "configure", "router", "--set", f"rules={json.dumps(rules)}")
    assert json.loads(shown.stdout)["rules"][0]["actions"][0]["node"] == "dest"
    wrong = [{"name": "r", "actions": [{"type": "PRE_FETCHING", "node": "dest",
                                        "priors": "3 MG ; 2"}]}]  # fmt: skip
    refused = home.cli(
        "plugins", "configure", "router", "--set", f"rules={json.dumps(wrong)}", check=False
    )
    assert refused.returncode == 1
    assert "expected a modality after the number at character 9" in refused.stderr

    pacs = Pacs(Config.load(home.home))
    try:
        with connection():
            preferred = {n.name: n.preferred_transfer_syntax for n in Node.select()}
    finally:
        pacs.database.close_all()
    assert preferred == {"dest": "1.2.840.10008.1.2", "raw": "1.2.840.10008.1.2.1"}


def test_a_real_server_routes_what_a_modality_sends(tmp_path, storescp):
    """End to end: storescu -> ``pacscore serve`` (router loaded from its entry point,
    configured with the CLI) -> storescp, byte for byte."""
    dest = storescp()
    server = PacsProcess(tmp_path / "home", "sqlite:///index.db").init()
    server.cli("node", "add", "dest", "--aet", dest.aet, "--host", "127.0.0.1",
               "--port", str(dest.port))  # fmt: skip
    rules = [{"name": "all", "actions": [{"type": "PUSH", "node": "dest"}]}]
    server.cli("plugins", "configure", "router", "--set", f"rules={json.dumps(rules)}")
    server.cli("settings", "--set", "study_stable_seconds=1")
    server.start()
    try:
        sent = [make_instance(tmp_path / "in", study_uid="1.2.3.77", instance_number=n)
                for n in range(2)]  # fmt: skip
        result = server.storescu(*sent)
        assert result.returncode == 0, result.stderr
        wait_until(lambda: len(dest.files()) == 2, timeout=60, what="the study at storescp")
        jobs = wait_until(
            lambda: "\tdone\t" in server.cli("jobs", "list").stdout and server.cli("jobs", "list"),
            what="the send job done",
        )
    finally:
        server.stop()
    assert jobs.stdout.split("\t")[1:3] == ["router.send", "done"]
    assert sorted(dataset_bytes(p) for p in dest.files()) == sorted(dataset_bytes(p) for p in sent)
