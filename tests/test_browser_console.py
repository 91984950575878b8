"""The console in headless Chromium against a real ``pacscore serve``.

One flow, as an operator runs it: log in, search studies stored with DCMTK,
open one, download its ZIP, delete another with confirmation, enable a
plugin and save its settings (applied without restart: the plugin then
handles the next store).  Screenshots of the main pages go to
``$PACSCORE_SCREENSHOTS`` when set (``docs/screenshots`` for the guide).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By

from tests.conftest import PacsProcess
from tests.dicomgen import make_instance

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
EXAMPLE_PLUGIN = Path(__file__).parent.parent / "docs" / "example-plugin"
ADMIN_PASSWORD = "browser-admin-pass"


def install_example_plugin(target: Path, work: Path) -> None:
    build = work / "example-plugin"
    shutil.copytree(EXAMPLE_PLUGIN, build, ignore=shutil.ignore_patterns("*.egg-info", "build"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-index", "--no-deps", "--no-build-isolation", "--target", str(target), str(build)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are missing (scripts/apt-test-packages.txt)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,900"):  # fmt: skip
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.downloads = downloads
    yield driver
    driver.quit()


@pytest.fixture
def served(tmp_path):
    site = tmp_path / "site"
    install_example_plugin(site, tmp_path)
    pacs = PacsProcess(tmp_path / "home", "sqlite:///index.db")
    pacs.env["PYTHONPATH"] = str(site)
    pacs.init()
    pacs.cli("init", "--admin-password", ADMIN_PASSWORD)
    pacs.cli("plugins", "disable", "hello")
    pacs.start()
    yield pacs
    pacs.stop()


def shoot(driver, name: str) -> None:
    folder = os.environ.get("PACSCORE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def wait_for(condition, timeout: float = 30, what: str = "condition"):
    """Poll ``condition``; an element replaced by a page load mid-check counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except (StaleElementReferenceException, NoSuchElementException, NoAlertPresentException):
            result = None
        except WebDriverException as exc:
            # Chromium's wording of a stale element when the page changes under the lookup
            if "does not belong to the document" not in str(exc):
                raise
            result = None
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def flash_text(driver) -> str:
    return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".flash"))


def test_operator_flow_in_chromium(served, browser, tmp_path):
    keep = make_instance(tmp_path / "in", patient_name="MARTIN^ALICE", patient_id="B1",
                         modality="MR", accession="A100", institution="NORTH")  # fmt: skip
    drop = make_instance(tmp_path / "in", patient_name="DURAND^PAUL", patient_id="B2",
                         modality="CT", accession="A200")  # fmt: skip
    stored = served.storescu(keep, drop)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    base = f"http://127.0.0.1:{served.http_port}"
    driver = browser

    driver.get(base + "/studies/")
    assert "/login" in driver.current_url
    shoot(driver, "login")
    driver.find_element(By.ID, "login").send_keys("admin")
    driver.find_element(By.ID, "password").send_keys(ADMIN_PASSWORD)
    driver.find_element(By.ID, "submit").click()
    wait_for(lambda: driver.find_elements(By.ID, "studies"), what="the study list")
    wait_for(lambda: "2 studies" in driver.find_element(By.ID, "total").text, what="2 studies")
    shoot(driver, "studies")

    # search with a wildcard, then open the study
    driver.find_element(By.ID, "patient_name").send_keys("mart*")
    driver.find_element(By.ID, "search").click()
    wait_for(lambda: "1 study" in driver.find_element(By.ID, "total").text, what="search")
    driver.find_element(By.LINK_TEXT, "MARTIN^ALICE").click()
    study_uid = wait_for(lambda: driver.find_element(By.ID, "study-uid").text, what="study")
    assert "NORTH" in driver.page_source
    shoot(driver, "study")

    # the ZIP arrives whole and holds the one instance
    driver.find_element(By.ID, "download").click()
    zips = wait_for(lambda: list(browser.downloads.glob("*.zip")), what="the ZIP download")
    wait_for(lambda: not list(browser.downloads.glob("*.crdownload")), what="download end")
    with zipfile.ZipFile(zips[0]) as archive:
        [member] = archive.namelist()
        assert member.endswith(f"{keep.stem}.dcm")
    assert study_uid in zips[0].name

    # delete the other study, through the confirmation page
    driver.get(base + "/studies/?patient_id=B2")
    driver.find_element(By.LINK_TEXT, "DURAND^PAUL").click()
    driver.find_element(By.ID, "delete").click()
    assert "cannot be undone" in driver.page_source
    shoot(driver, "delete-confirmation")
    driver.find_element(By.ID, "confirm").click()
    wait_for(lambda: "Study deleted" in flash_text(driver), what="the deletion message")
    wait_for(lambda: "1 study" in driver.find_element(By.ID, "total").text, what="1 study left")

    # enable the example plugin and configure it: it handles the next store at once
    driver.get(base + "/plugins/")
    assert "disabled" in driver.find_element(By.ID, "plugin-hello").text
    driver.find_element(By.ID, "enable-hello").click()
    wait_for(lambda: "enabled" in flash_text(driver), what="the plugin switch")
    driver.find_element(By.ID, "settings-hello").click()
    log_file = tmp_path / "hello.log"
    field = driver.find_element(By.ID, "f-log_file")
    field.clear()
    field.send_keys(str(log_file))
    shoot(driver, "plugin-settings")
    driver.find_element(By.ID, "save").click()
    wait_for(lambda: "saved" in flash_text(driver), what="the settings message")
    driver.get(base + "/plugins/")
    shoot(driver, "plugins")
    late = make_instance(tmp_path / "late", patient_id="B3")
    assert served.storescu(late).returncode == 0
    wait_for(lambda: log_file.exists() and late.stem in log_file.read_text(), what="hello")

    # a node, created with the generated form, deleted after the browser's confirmation
    driver.get(base + "/nodes/new")
    for field, value in (("name", "ws1"), ("aet", "WS1"), ("host", "127.0.0.1"), ("port", "104")):
        driver.find_element(By.ID, f"f-{field}").send_keys(value)
    driver.find_element(By.ID, "save").click()
    wait_for(lambda: "Node ws1 saved" in flash_text(driver), what="the node")
    driver.find_element(By.CSS_SELECTOR, "form[data-confirm] button.danger").click()
    alert = wait_for(lambda: driver.switch_to.alert, what="the confirmation")
    assert alert.text == "Delete node ws1?"
    alert.dismiss()
    assert "ws1" in driver.find_element(By.ID, "nodes").text
    driver.find_element(By.CSS_SELECTOR, "form[data-confirm] button.danger").click()
    wait_for(lambda: driver.switch_to.alert, what="the confirmation").accept()
    wait_for(lambda: "Node ws1 deleted" in flash_text(driver), what="the node deletion")

    for page, name in (("/nodes/", "nodes"), ("/users/profiles", "profiles"),
                       ("/jobs/", "jobs"), ("/settings/", "settings"), ("/audit/", "audit"),
                       ("/log/", "log")):  # fmt: skip
        driver.get(base + page)
        assert "Error" not in driver.title, page
        shoot(driver, name)
    driver.get(base + "/audit/?action=delete")
    assert study_uid not in driver.page_source and "admin" in driver.page_source
