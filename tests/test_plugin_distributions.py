"""Real plugin distributions, installed with pip and found through their entry
points by a real ``pacscore serve``: the documented example plugin, a plugin
whose ``on_store`` raises, one that cannot be imported, and disabling one.

The distributions are installed with ``pip install --target`` into a
temporary folder that only the pacscore processes of these tests get on
their ``PYTHONPATH``: the virtual environment (and every other test) never
sees them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.dicomgen import make_instance

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGIN = REPO / "docs" / "example-plugin"
TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"
DISTRIBUTIONS = {
    "hello": EXAMPLE_PLUGIN,
    "failing_store": TEST_PLUGINS / "failing-store",
    "recorder": TEST_PLUGINS / "recorder",
    "broken_import": TEST_PLUGINS / "broken-import",
}


def pip_install_target(source: Path, target: Path, work: Path) -> None:
    """``pip install --target`` a copy of ``source`` (the build leaves files in its tree)."""
    build = work / source.name
    shutil.copytree(
        source, build, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-index", "--no-deps", "--no-build-isolation", "--target", str(target), str(build)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(
            f"pip could not install {source} (setuptools < 70.1 needs 'wheel' in the venv):\n"
            f"{result.stdout}\n{result.stderr}"
        )


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Callable[[str], Path]:
    """``installed(name)``: the folder holding that distribution, built once per session."""
    targets: dict[str, Path] = {}

    def install(name: str) -> Path:
        if name not in targets:
            target = tmp_path_factory.mktemp(f"site-{name}")
            pip_install_target(DISTRIBUTIONS[name], target, tmp_path_factory.mktemp("build"))
            targets[name] = target
        return targets[name]

    return install


def env_with(pacs, installed, *names: str, **extra: str) -> dict[str, str]:
    """The environment of ``pacs`` with the named distributions on PYTHONPATH."""
    paths = [str(installed(name)) for name in names]
    if pacs.env.get("PYTHONPATH"):
        paths.append(pacs.env["PYTHONPATH"])
    return {**pacs.env, "PYTHONPATH": os.pathsep.join(paths), **extra}


def wait_for(predicate: Callable[[], object], timeout: float = 30, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def plugin_line(listing: str, name: str) -> str:
    for line in listing.splitlines():
        if line.split("\t", 1)[0] == name:
            return line
    raise AssertionError(f"{name} is not in 'plugins list':\n{listing}")


def assert_stored(result) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Store Response (Success)" in output, output
    assert not re.search(r"Store Response \((?!Success)", output), output


def find_images(pacs, study_uid: str, series_uid: str) -> str:
    result = pacs.findscu(
        "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study_uid}",
        f"SeriesInstanceUID={series_uid}", "SOPInstanceUID", aet="FINDSCU", extra=("-v",),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


# -- the documented example --------------------------------------------------------------


def test_example_plugin_logs_every_stored_instance(pacs_home, installed, tmp_path):
    env = env_with(pacs_home, installed, "hello")
    listing = pacs_home.cli("plugins", "list", env=env).stdout
    assert plugin_line(listing, "hello").split("\t") == ["hello", "1.0.0", "enabled", "loaded"]

    log_file = tmp_path / "hello.log"
    out = pacs_home.cli("plugins", "configure", "hello", "--set", f"log_file={log_file}", env=env)
    assert f'"log_file": "{log_file}"' in out.stdout
    pacs_home.cli("settings", "--set", "study_stable_seconds=1", env=env)
    pacs_home.start(extra_env={"PYTHONPATH": env["PYTHONPATH"]})

    study = "1.2.826.0.1.3680043.10.1523.99.1"
    files = [make_instance(tmp_path / "in", patient_id="HELLO1", study_uid=study,
                           series_uid=study + ".1", modality="MR", instance_number=i)
             for i in range(3)]  # fmt: skip
    files.append(make_instance(tmp_path / "in", patient_id="HELLO2", modality="CT"))
    assert_stored(pacs_home.storescu(*files, extra=("-v",)))

    expected = {f"{f.stem} HELLO1 MR" for f in files[:3]} | {f"{files[3].stem} HELLO2 CT"}

    def stored_lines():
        lines = [line for line in lines_of(log_file) if not line.startswith("#")]
        return lines if len(lines) >= len(files) else None

    lines = wait_for(stored_lines, what="one line per stored instance in the hello log")
    assert sorted(lines) == sorted(expected)

    # on_study_stable: once each study has been quiet for study_stable_seconds
    wait_for(
        lambda: f"# study {study} stable with 3 instance(s)" in lines_of(log_file),
        what="the on_study_stable line",
    )


def test_disabled_plugin_is_not_loaded_after_restart(pacs_home, installed, tmp_path):
    recorded = tmp_path / "recorded.txt"
    env = env_with(
        pacs_home, installed, "hello", "recorder", PACSCORE_TEST_RECORDER_FILE=str(recorded)
    )
    extra_env = {k: env[k] for k in ("PYTHONPATH", "PACSCORE_TEST_RECORDER_FILE")}
    log_file = tmp_path / "hello.log"
    pacs_home.cli("plugins", "configure", "hello", "--set", f"log_file={log_file}", env=env)
    pacs_home.start(extra_env=extra_env)
    first = make_instance(tmp_path / "a")
    assert_stored(pacs_home.storescu(first, extra=("-v",)))
    wait_for(lambda: len(lines_of(log_file)) >= 1, what="the hello log line")

    out = pacs_home.cli("plugins", "disable", "hello", env=env)
    assert "plugin hello disabled" in out.stdout
    pacs_home.stop()
    pacs_home.start(extra_env=extra_env)
    listing = pacs_home.cli("plugins", "list", env=env).stdout
    assert plugin_line(listing, "hello").split("\t") == ["hello", "1.0.0", "disabled", "disabled"]
    assert plugin_line(listing, "recorder").split("\t")[3] == "loaded"

    second = make_instance(tmp_path / "b")
    assert_stored(pacs_home.storescu(second, extra=("-v",)))
    # the recorder is the witness that on_store was delivered for the second instance
    wait_for(lambda: second.stem in lines_of(recorded), what="on_store of the recorder")
    assert [line.split()[0] for line in lines_of(log_file)] == [first.stem]

    pacs_home.cli("plugins", "enable", "hello", env=env)
    listing = pacs_home.cli("plugins", "list", env=env).stdout
    assert plugin_line(listing, "hello").split("\t")[2:] == ["enabled", "loaded"]


def test_every_server_process_follows_a_plugin_switched_while_serving(
    pacs_home, installed, tmp_path
):
    """``pacscore plugins enable`` / ``disable`` (or the console's switch, which acts in
    the web process) while the server runs: the DICOM listener processes that receive
    the instances record the plugin's events from then on, then no longer."""
    env = env_with(pacs_home, installed, "hello")
    log_file = tmp_path / "hello.log"
    pacs_home.cli("plugins", "configure", "hello", "--set", f"log_file={log_file}", env=env)
    pacs_home.cli("plugins", "disable", "hello", env=env)
    pacs_home.start(extra_env={"PYTHONPATH": env["PYTHONPATH"]}, args=("--dicom-processes", "3"))

    def store_on_several_associations(batch: str) -> list[str]:
        files = [make_instance(tmp_path / batch, instance_number=i) for i in range(9)]
        with ThreadPoolExecutor(9) as pool:  # spread over the listener processes
            for result in pool.map(lambda f: pacs_home.storescu(f, extra=("-v",)), files):
                assert_stored(result)
        return [f.stem for f in files]

    def logged() -> str:
        return log_file.read_text() if log_file.exists() else ""

    before = store_on_several_associations("before")
    pacs_home.cli("plugins", "enable", "hello", env=env)
    time.sleep(2)  # each process reads the plugins' states every half second
    while_enabled = store_on_several_associations("enabled")
    wait_for(lambda: all(uid in logged() for uid in while_enabled), what="every instance logged")
    pacs_home.cli("plugins", "disable", "hello", env=env)
    time.sleep(2)
    after = store_on_several_associations("after")
    time.sleep(2)  # the dispatcher delivers an event within a second of its store
    assert not [uid for uid in before + after if uid in logged()]


# -- isolation -------------------------------------------------------------------------------


def test_plugin_raising_in_on_store_is_isolated(pacs_home, installed, tmp_path):
    recorded = tmp_path / "recorded.txt"
    env = env_with(
        pacs_home,
        installed,
        "failing_store",
        "recorder",
        PACSCORE_TEST_RECORDER_FILE=str(recorded),
    )
    pacs_home.cli("node", "add", "finder", "--aet", "FINDSCU", "--host", "127.0.0.1",
                  "--port", "1", "--allow", "find", env=env)  # fmt: skip
    pacs_home.start(extra_env={k: env[k] for k in ("PYTHONPATH", "PACSCORE_TEST_RECORDER_FILE")})

    study = "1.2.826.0.1.3680043.10.1523.99.2"
    files = [make_instance(tmp_path / "in", study_uid=study, series_uid=study + ".1",
                           instance_number=i) for i in range(2)]  # fmt: skip
    assert_stored(pacs_home.storescu(*files, extra=("-v",)))
    uids = sorted(f.stem for f in files)

    # the well-behaved plugin still receives every on_store
    wait_for(lambda: sorted(lines_of(recorded)) == uids, what="on_store of the recorder")

    # the instances are archived and findable
    found = find_images(pacs_home, study, study + ".1")
    for uid in uids:
        assert uid in found, found

    # the failure is recorded with the plugin and the hook, and listed
    def listed_failures():
        listing = pacs_home.cli("plugins", "list", env=env).stdout
        failures = re.findall(r"failure .* failing_store\.on_store: (.*)", listing)
        return (listing, failures) if len(failures) >= len(uids) else None

    listing, failures = wait_for(listed_failures, timeout=20, what="the recorded failures")
    assert plugin_line(listing, "failing_store").split("\t") == [
        "failing_store", "0.1.0", "enabled", "loaded"
    ]  # fmt: skip
    assert all(f.startswith("RuntimeError: failing_store refuses to handle") for f in failures)
    assert {f.rsplit(" ", 1)[1] for f in failures} == set(uids)
    assert "plugin failing_store failed in on_store" in pacs_home.log()


def test_plugin_failing_at_import_is_listed_and_the_server_still_stores(
    pacs_home, installed, tmp_path
):
    env = env_with(pacs_home, installed, "broken_import", "hello")
    listing = pacs_home.cli("plugins", "list", env=env).stdout
    assert plugin_line(listing, "broken_import").split("\t") == [
        "broken_import",
        "0.3.0",
        "enabled",
        "failed: RuntimeError: pacscore_test_broken_import is broken on purpose",
    ]
    assert plugin_line(listing, "hello").split("\t")[3] == "loaded"  # the others still load

    pacs_home.cli("node", "add", "finder", "--aet", "FINDSCU", "--host", "127.0.0.1",
                  "--port", "1", "--allow", "find", env=env)  # fmt: skip
    pacs_home.start(extra_env={"PYTHONPATH": env["PYTHONPATH"]})
    assert "plugin broken_import failed in load" in pacs_home.log()

    study = "1.2.826.0.1.3680043.10.1523.99.3"
    path = make_instance(tmp_path, study_uid=study, series_uid=study + ".1")
    assert_stored(pacs_home.storescu(path, extra=("-v",)))
    assert path.stem in find_images(pacs_home, study, study + ".1")


def test_example_plugin_own_tests_pass(tmp_path):
    """The example's tests/ (shown in the plugin guide) pass against this pacscore."""
    copy = tmp_path / "example-plugin"
    shutil.copytree(EXAMPLE_PLUGIN, copy, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=copy,
        env={**os.environ, "PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
