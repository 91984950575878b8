"""The ``pacscore`` command line as an administrator uses it.

Every test drives ``python -m pacscore`` in a subprocess against a real home
(SQLite and PostgreSQL); a server is started only where the command talks to
one (``echo``) or where the result is checked over DICOM (C-FIND).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filewriter import dcmwrite

from pacscore.cli import build_parser
from pacscore.storage import instance_relpath
from tests.conftest import PacsProcess, free_port, run_cli
from tests.dicomgen import make_instance

pytestmark = pytest.mark.timeout(120)

FINDER = "FINDER"


def pacscore(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``pacscore`` without ``--home`` (for ``--help`` and argument errors)."""
    return run_cli(list(args), env=env, timeout=60)


def sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def stored_file(pacs: PacsProcess, uid: str) -> Path:
    return pacs.home / "storage" / instance_relpath(uid)


def import_counts(output: str) -> tuple[int, int, int]:
    counts = {
        key: int(value)
        for key, value in re.findall(r"^(imported|duplicates|rejected): (\d+)$", output, re.M)
    }
    assert set(counts) == {"imported", "duplicates", "rejected"}, output
    return counts["imported"], counts["duplicates"], counts["rejected"]


def find_sop_uids(pacs: PacsProcess, patient_id: str) -> set[str]:
    """SOP Instance UIDs a C-FIND at IMAGE level returns for a patient (DCMTK findscu)."""
    result = pacs.findscu(
        "QueryRetrieveLevel=IMAGE", f"PatientID={patient_id}", "StudyInstanceUID",
        "SeriesInstanceUID", "SOPInstanceUID", aet=FINDER, extra=("-v",),
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Find Response" in output, output
    # DCMTK prints the NUL that pads an odd-length UID
    found = re.findall(r"\(0008,0018\) UI \[([0-9.]+)\x00?\]", output)
    assert len(found) == output.count("(Pending)"), output
    return set(found)


def declare_finder(pacs: PacsProcess) -> None:
    pacs.cli(
        "node", "add", "finder", "--aet", FINDER, "--host", "127.0.0.1", "--port", "104",
        "--allow", "find",
    )  # fmt: skip


# -- init -------------------------------------------------------------------------------


def test_init_twice_keeps_configuration_nodes_and_data(pacs_home, tmp_path):
    config_before = (pacs_home.home / "pacscore.toml").read_text()
    pacs_home.cli("node", "add", "ct", "--aet", "CT01", "--host", "10.0.0.5", "--port", "104")
    instance = make_instance(tmp_path / "in", patient_id="INIT1")
    assert import_counts(pacs_home.cli("import", str(instance)).stdout) == (1, 0, 0)
    stored = stored_file(pacs_home, sop_uid(instance))
    assert stored.is_file()

    # again, with and without the same options
    again = pacs_home.cli("init", "--db", pacs_home.db_url, "--aet", pacs_home.aet)
    assert "pacscore home ready" in again.stdout
    pacs_home.cli("init")

    # same secret key, database and AE title; the node and the instance are still there
    assert (pacs_home.home / "pacscore.toml").read_text() == config_before
    assert "CT01" in pacs_home.cli("node", "list").stdout
    assert stored.is_file()
    assert import_counts(pacs_home.cli("import", str(instance)).stdout) == (0, 1, 0)
    assert pacs_home.cli("reindex", "--check").returncode == 0


@pytest.mark.parametrize(
    "bad_url",
    [
        "mysql://root@127.0.0.1/pacs",  # unsupported scheme
        "postgresql://postgres@127.0.0.1:{closed_port}/pacs",  # nothing listens
        "postgresql://postgres@127.0.0.1:5432/pacscore_no_such_database_x",
    ],
)
def test_init_with_a_bad_database_url_fails_with_a_clear_message(pacs_home, tmp_path, bad_url):
    bad_url = bad_url.format(closed_port=free_port())
    fresh = PacsProcess(tmp_path / "fresh", bad_url)
    result = fresh.cli("init", "--db", bad_url, check=False)
    assert result.returncode != 0
    assert "cannot open database" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not (fresh.home / "pacscore.toml").exists()  # no half-made home to trip over

    # an existing home keeps its working database
    config_before = (pacs_home.home / "pacscore.toml").read_text()
    result = pacs_home.cli("init", "--db", bad_url, check=False)
    assert result.returncode != 0 and "cannot open database" in result.stderr, result.stderr
    assert (pacs_home.home / "pacscore.toml").read_text() == config_before
    assert pacs_home.cli("node", "list").returncode == 0


# -- arguments --------------------------------------------------------------------------


def all_commands() -> list[list[str]]:
    """Every command and sub-command the parser declares, found by walking it."""

    def walk(parser, prefix):
        found = [prefix]
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    found += walk(sub, [*prefix, name])
        return found

    return walk(build_parser(), [])


def test_every_command_has_a_help_that_exits_zero():
    commands = all_commands()
    # the documented command set, so that a command dropped by mistake is noticed
    for expected in (["init"], ["serve"], ["import"], ["reindex"], ["node", "add"], ["echo"],
                     ["plugins", "configure"], ["settings"], ["storage", "set"]):  # fmt: skip
        assert expected in commands
    for command in commands:
        result = pacscore(*command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert result.stdout.startswith("usage: pacscore"), (command, result.stdout)


BAD_ARGUMENTS = [
    (["frobnicate"], r"invalid choice: 'frobnicate'"),
    ([], r"required: COMMAND"),
    (["node", "add", "x", "--host", "h", "--port", "104"], r"required: --aet"),
    (["node", "add", "x", "--aet", "A", "--host", "h", "--port", "abc"], r"invalid int value"),
    (["node", "add", "x", "--aet", "A", "--host", "h", "--port", "0"], r"invalid port 0"),
    (["node", "add", "x", "--aet", "A", "--host", "h", "--port", "65536"], r"invalid port"),
    (["node", "add", "x", "--aet", "A" * 17, "--host", "h", "--port", "104"], r"1 to 16"),
    (
        [
            "node",
            "add",
            "x",
            "--aet",
            "A",
            "--host",
            "h",
            "--port",
            "104",
            "--allow",
            "store,teleport",
        ],
        r"unknown right\(s\) teleport",
    ),  # fmt: skip
    (
        ["node", "add", "ct", "--aet", "OTHER", "--host", "h", "--port", "104"],
        r"a node named 'ct' already exists",
    ),  # fmt: skip
    (["node", "remove", "nobody"], r"no node named 'nobody'"),
    (["echo", "nobody"], r"no node named 'nobody'"),
    (["import", "/no/such/folder"], r"no such file or folder: /no/such/folder"),
    (["storage", "set", "default"], r"nothing to change"),
    (["storage", "set", "default", "--min-free-mb", "-1"], r"must be >= 0"),
    (["settings", "--set", "study_stable_seconds"], r"expected KEY=VALUE"),
    (["--log-level", "LOUD", "node", "list"], r"invalid --log-level"),
]


def test_bad_arguments_exit_non_zero_with_a_message(pacs_home):
    pacs_home.cli("node", "add", "ct", "--aet", "CT01", "--host", "10.0.0.5", "--port", "104")
    for args, message in BAD_ARGUMENTS:
        result = pacs_home.cli(*args, check=False)
        assert result.returncode != 0, (args, result.stdout)
        assert re.search(message, result.stderr), (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
    # nothing half-done: only the first node exists, unchanged
    listed = pacs_home.cli("node", "list").stdout.splitlines()
    assert listed == ["ct\tCT01\t10.0.0.5:104\tallow=store"], listed


def test_a_folder_that_is_not_a_home_is_refused(tmp_path):
    result = pacscore("--home", str(tmp_path / "nothing"), "node", "list")
    assert result.returncode != 0
    assert "not a pacscore home" in result.stderr and "pacscore init" in result.stderr
    assert not (tmp_path / "nothing").exists()


# -- nodes and echo -----------------------------------------------------------------------


def test_node_add_list_remove_round_trip(pacs_home):
    assert pacs_home.cli("node", "list").stdout.strip() == "no node declared"
    pacs_home.cli("node", "add", "ct", "--aet", "CT01", "--host", "10.0.0.5", "--port", "104")
    added = pacs_home.cli(
        "node", "add", "viewer", "--aet", "VIEWER", "--host", "viewer.example", "--port",
        "11112", "--allow", "find, move,get",
    )  # fmt: skip
    assert "node viewer added (VIEWER@viewer.example:11112)" in added.stdout
    assert pacs_home.cli("node", "list").stdout.splitlines() == [
        "ct\tCT01\t10.0.0.5:104\tallow=store",
        "viewer\tVIEWER\tviewer.example:11112\tallow=find,move,get",
    ]
    assert "node ct removed" in pacs_home.cli("node", "remove", "ct").stdout
    assert pacs_home.cli("node", "list").stdout.splitlines() == [
        "viewer\tVIEWER\tviewer.example:11112\tallow=find,move,get"
    ]
    # the name is free again
    pacs_home.cli("node", "add", "ct", "--aet", "CT02", "--host", "10.0.0.6", "--port", "104")
    assert "ct\tCT02\t10.0.0.6:104\tallow=store" in pacs_home.cli("node", "list").stdout


def test_echo_a_declared_node(server):
    server.cli(
        "node", "add", "self", "--aet", server.aet, "--host", "127.0.0.1",
        "--port", str(server.dicom_port),
    )  # fmt: skip
    result = server.cli("echo", "self")
    assert re.search(
        rf"C-ECHO self \({server.aet}@127.0.0.1:{server.dicom_port}\): success in [\d.]+ ms",
        result.stdout,
    ), result.stdout

    closed = free_port()
    server.cli("node", "add", "gone", "--aet", "GONE", "--host", "127.0.0.1",
               "--port", str(closed))  # fmt: skip
    result = server.cli("echo", "gone", "--timeout", "5", check=False)
    assert result.returncode != 0
    assert "C-ECHO to gone failed" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# -- import -------------------------------------------------------------------------------


def write_without_file_meta(source: Path, target: Path, implicit_vr: bool = True) -> None:
    """A bare data set (little endian): no preamble, no file meta."""
    ds = dcmread(source)
    del ds.file_meta
    ds.preamble = None
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as fp:
        dcmwrite(fp, ds, implicit_vr=implicit_vr, little_endian=True, enforce_file_format=False)


def build_import_tree(root: Path, patient_id: str) -> tuple[set[str], dict[str, str]]:
    """A messy folder; return (SOP UIDs that must be imported, {file: reason} to reject)."""
    study = "1.2.826.0.1.3680043.9.7433.1"
    made = root.parent / "made"
    valid = [
        make_instance(made, patient_id=patient_id, study_uid=study, instance_number=i)
        for i in range(6)
    ]
    good = {sop_uid(p) for p in valid}
    names = [
        root / "a" / "b" / "c" / "deep.dcm",
        root / "a" / "with spaces & (parens).dcm",
        root / "a" / "ünïcødé 名前",
        root / "UPPER.DCM",
        root / ".hidden",
    ]
    for source, target in zip(valid, names, strict=False):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    # a file whose name is not valid UTF-8
    os.makedirs(root / "x", exist_ok=True)
    shutil.copy(valid[5], os.path.join(os.fsencode(root / "x"), b"\xff\xfe-latin.dcm"))

    bare = make_instance(made, patient_id=patient_id, study_uid=study, instance_number=9)
    write_without_file_meta(bare, root / "a" / "b" / "bare-dataset")
    good.add(sop_uid(bare))
    bare = make_instance(made, patient_id=patient_id, study_uid=study, instance_number=10)
    write_without_file_meta(bare, root / "a" / "bare-explicit.dcm", implicit_vr=False)
    good.add(sop_uid(bare))

    rejected = {}
    (root / "notes.txt").write_text("Patient CD, see the report.\n")
    rejected["notes.txt"] = "not a DICOM file"
    (root / "a" / "empty.dcm").write_bytes(b"")
    rejected["empty.dcm"] = "DICOM"
    cut = make_instance(made / "cut", patient_id=patient_id, study_uid=study, rows=64, columns=64)
    data = cut.read_bytes()
    (root / "a" / "b" / "truncated.dcm").write_bytes(data[: len(data) // 2])
    rejected["truncated.dcm"] = "truncated"
    cut_bare = make_instance(made / "cut", patient_id=patient_id, study_uid=study)
    write_without_file_meta(cut_bare, made / "cut" / "bare")
    data = (made / "cut" / "bare").read_bytes()
    (root / "truncated-bare").write_bytes(data[:-10])
    rejected["truncated-bare"] = "truncated"
    return good, rejected


def test_import_a_messy_folder_then_again(pacs_home, tmp_path):
    good, rejected = build_import_tree(tmp_path / "cd", "IMPORT1")

    result = pacs_home.cli("import", "--quiet", str(tmp_path / "cd"))
    assert import_counts(result.stdout) == (len(good), 0, len(rejected)), result.stdout
    for name, reason in rejected.items():
        line = next((ln for ln in result.stdout.splitlines() if name in ln), None)
        assert line is not None, f"{name} not reported:\n{result.stdout}"
        assert reason in line, line
    assert "Traceback" not in result.stderr, result.stderr
    for uid in good:
        assert stored_file(pacs_home, uid).is_file()
    # the import flushed its store journal before exiting: no second link is left
    assert list((pacs_home.home / "storage" / ".incoming").iterdir()) == []

    again = pacs_home.cli("import", str(tmp_path / "cd"))
    assert import_counts(again.stdout) == (0, len(good), len(rejected)), again.stdout

    declare_finder(pacs_home)
    pacs_home.start()
    assert find_sop_uids(pacs_home, "IMPORT1") == good


# -- reindex ------------------------------------------------------------------------------


def test_reindex_check_reports_a_lost_file_and_reindex_forgets_it(pacs_home, tmp_path):
    files = [make_instance(tmp_path / "in", patient_id="REIDX") for _ in range(3)]
    pacs_home.cli("import", *map(str, files))
    check = pacs_home.cli("reindex", "--check")
    assert "missing files: 0, unindexed files: 0" in check.stdout

    lost = stored_file(pacs_home, sop_uid(files[1]))
    lost.unlink()
    check = pacs_home.cli("reindex", "--check", check=False)
    assert check.returncode == 1, check.stdout
    assert f"indexed but missing: {lost}" in check.stdout
    assert "missing files: 1, unindexed files: 0" in check.stdout

    result = pacs_home.cli("reindex")
    assert "indexed: 0, removed rows without file: 1" in result.stdout
    assert pacs_home.cli("reindex", "--check").returncode == 0
    # the lost instance is no longer known: sending it again stores it anew
    assert import_counts(pacs_home.cli("import", *map(str, files)).stdout) == (1, 2, 0)
    assert lost.is_file()
    assert pacs_home.cli("reindex", "--check").returncode == 0


def test_reindex_indexes_files_copied_from_another_archive(pacs_home, tmp_path):
    other = PacsProcess(tmp_path / "other", "sqlite:///index.db").init()
    sources = [make_instance(tmp_path / "in", patient_id="COPIED") for _ in range(2)]
    other.cli("import", *map(str, sources))
    kept, dropped = (sop_uid(p) for p in sources)
    # one copied at the same place, one dropped at the top of the storage folder
    relpath = instance_relpath(kept)
    (pacs_home.home / "storage" / relpath).parent.mkdir(parents=True)
    shutil.copy(other.home / "storage" / relpath, pacs_home.home / "storage" / relpath)
    shutil.copy(
        other.home / "storage" / instance_relpath(dropped),
        pacs_home.home / "storage" / "from-other-site.dcm",
    )

    check = pacs_home.cli("reindex", "--check", check=False)
    assert check.returncode == 1
    assert "missing files: 0, unindexed files: 2" in check.stdout
    assert "on disk but not indexed:" in check.stdout

    result = pacs_home.cli("reindex")
    assert "indexed: 2, removed rows without file: 0" in result.stdout
    assert pacs_home.cli("reindex", "--check").returncode == 0
    # both are known under their own UIDs now
    assert import_counts(pacs_home.cli("import", *map(str, sources)).stdout) == (0, 2, 0)
    declare_finder(pacs_home)
    pacs_home.start()
    assert find_sop_uids(pacs_home, "COPIED") == {kept, dropped}


# -- settings and storage -----------------------------------------------------------------


def test_settings_set_validates_and_persists(pacs_home):
    for assignment, message in (
        ("no_such_setting=1", "Unknown field"),
        ("study_stable_seconds=soon", "Not a valid integer"),
        ("study_stable_seconds=0", "greater than or equal to 1"),
        ("overwrite_duplicates=maybe", "Not a valid boolean"),
    ):
        # a valid change in the same command is not applied either
        result = pacs_home.cli(
            "settings", "--set", "max_find_results=7", "--set", assignment, check=False
        )
        assert result.returncode != 0, assignment
        assert message in result.stderr, (assignment, result.stderr)
        assert "Traceback" not in result.stderr
    assert '"max_find_results": 10000' in pacs_home.cli("settings").stdout

    changed = pacs_home.cli(
        "settings", "--set", "study_stable_seconds=5", "--set", "overwrite_duplicates=true"
    )
    assert '"study_stable_seconds": 5' in changed.stdout
    shown = pacs_home.cli("settings").stdout  # a new process: read back from the database
    assert '"study_stable_seconds": 5' in shown
    assert '"overwrite_duplicates": true' in shown
    assert '"max_find_results": 10000' in shown  # other settings untouched


def storage_lines(pacs: PacsProcess) -> list[list[str]]:
    return [line.split("\t") for line in pacs.cli("storage", "list").stdout.splitlines()]


def test_storage_add_list_set(pacs_home, tmp_path):
    (default,) = storage_lines(pacs_home)
    assert default[:4] == ["default", str(pacs_home.home / "storage"), "enabled", "limit 2048 MB"]
    assert re.fullmatch(r"\d+ MB free", default[4])

    second = tmp_path / "disk2" / "pacs"
    added = pacs_home.cli("storage", "add", "second", str(second), "--min-free-mb", "0")
    assert f"storage second added: {second}" in added.stdout
    assert second.is_dir()
    assert [line[:4] for line in storage_lines(pacs_home)] == [
        ["default", str(pacs_home.home / "storage"), "enabled", "limit 2048 MB"],
        ["second", str(second), "enabled", "limit 0 MB"],
    ]
    result = pacs_home.cli("storage", "add", "second", str(tmp_path / "x"), check=False)
    assert result.returncode != 0 and "already exists" in result.stderr
    result = pacs_home.cli("storage", "set", "third", "--disable", check=False)
    assert result.returncode != 0 and "no storage named 'third'" in result.stderr
    result = pacs_home.cli("storage", "set", "second", "--enable", "--disable", check=False)
    assert result.returncode != 0 and "not allowed with" in result.stderr

    pacs_home.cli("storage", "set", "default", "--disable", "--min-free-mb", "10")
    assert storage_lines(pacs_home)[0][2:4] == ["disabled", "limit 10 MB"]
    # new files go to the enabled folder
    instance = make_instance(tmp_path / "in")
    assert import_counts(pacs_home.cli("import", str(instance)).stdout) == (1, 0, 0)
    assert (second / instance_relpath(sop_uid(instance))).is_file()
    assert not stored_file(pacs_home, sop_uid(instance)).exists()

    pacs_home.cli("storage", "set", "default", "--enable")
    assert storage_lines(pacs_home)[0][2:4] == ["enabled", "limit 10 MB"]
    assert pacs_home.cli("reindex", "--check").returncode == 0


def test_init_admin_password_is_stored_hashed(pacs_home):
    from pacscore.db import bind_database, connection
    from pacscore.models import User
    from pacscore.users import verify_password

    pacs_home.cli("init", "--admin-password", "s3cret-Admin")
    database = bind_database(pacs_home.db_url, pacs_home.home)
    try:
        with connection():
            admin = User.get(User.login == "admin")
    finally:
        database.close_all()
    assert admin.profile == "system administrator"
    assert "s3cret-Admin" not in admin.password_hash
    assert admin.password_hash.startswith("scrypt$")
    assert verify_password("s3cret-Admin", admin.password_hash)
    assert not verify_password("wrong", admin.password_hash)


def test_first_init_creates_an_admin_with_a_password_only_root_reads(pacs_home):
    """A fresh home can open the console: 'admin', random password, changed at first login."""
    from pacscore.app import open_pacs
    from pacscore.users import log_in

    password_file = pacs_home.home / "initial-admin-password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    password = password_file.read_text().strip()
    assert len(password) >= 12
    again = pacs_home.cli("init")  # a second init neither replaces nor prints it
    assert "initial-admin-password" not in again.stdout
    assert password_file.read_text().strip() == password
    pacs = open_pacs(pacs_home.home, load_plugins=False)
    try:
        result = log_in(pacs, "admin", password)
        assert result.success and result.must_change_password
        assert not log_in(pacs, "admin", "guess").success
    finally:
        pacs.database.close_all()
