"""The audition page in a real headless Chromium: submit a prompt, wait, press a key, hear a note."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from instrumentgen.config import load_config

SCREENSHOT = Path(__file__).parents[2] / "docs" / "figures" / "serve_page.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no chromium + chromedriver on PATH (Debian: apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def page_app(tmp_path_factory, deployments, make_api, uvicorn_serving):
    """The API with fake handles rendering in this process (the page needs no Ray)."""
    root = tmp_path_factory.mktemp("inst")
    cfg = load_config("tiny", [f"serve.storage={root}", f"serve.library={root / 'library'}"])
    with uvicorn_serving(make_api(cfg, deployments(cfg))) as base:
        yield base, root


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout_s: float = 240):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = driver.execute_script(f"return {script}")
        if value:
            return value
        time.sleep(0.3)
    status = driver.execute_script("return document.getElementById('status').textContent")
    raise AssertionError(f"{script} still false after {timeout_s} s; status: {status}")


def test_the_page_generates_and_plays_an_instrument(page_app, browser):
    from selenium.webdriver.common.by import By

    base, root = page_app
    browser.get(base + "/")
    wait_for(browser, "document.getElementById('family').options.length > 0")
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("warm analog brass")
    for field, value in (("seed", "7"), ("low", "48"), ("high", "72")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "generate").click()
    wait_for(browser, "window.instrumentReady === true")
    assert browser.find_element(By.ID, "progress-bar").get_attribute("style").endswith("width: 100%;")
    assert browser.find_element(By.ID, "tc").text not in ("", "–")
    browser.find_element(By.CSS_SELECTOR, '.key[data-pitch="60"]').click()
    wait_for(browser, "window.playCount >= 1")
    played = browser.execute_script("return window.lastPlayed")
    assert played["status"] == 200 and played["pitch"] == 60 and played["url"].endswith("060_v100.wav")
    assert browser.execute_script("return window.audioState") == "running"
    assert browser.execute_script("return window.activeSources") >= 1  # a 0.5 s note is still sounding
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any(name.endswith("/notes/060_v100.wav") for name in fetched)
    browser.find_element(By.TAG_NAME, "body").send_keys("h")  # computer keyboard: A4 in the C4 octave
    wait_for(browser, "window.playCount >= 2")
    screenshot = browser.get_screenshot_as_png()
    assert screenshot[:4] == b"\x89PNG"
    if os.environ.get("INSTRUMENTGEN_WRITE_FIGURES"):  # docs/serving.md's figure; a plain run leaves docs alone
        SCREENSHOT.write_bytes(screenshot)

    instrument = browser.execute_script("return state.instrument.id")
    (root / instrument / "notes" / "060_v025.wav").unlink()  # a note that fails to load says so
    browser.execute_script("document.getElementById('velocity').value = 0")
    browser.find_element(By.CSS_SELECTOR, '.key[data-pitch="60"]').click()
    error = wait_for(browser, "window.lastError")
    assert "did not load (HTTP 404)" in error
    assert browser.find_element(By.ID, "status").get_attribute("class").split() == ["status", "error"]
    (root / instrument / "instrument.zip").unlink()  # the download checks its response
    browser.find_element(By.ID, "download").click()
    wait_for(browser, "window.lastError.startsWith('The download failed')")
    for field, value in (("low", "70"), ("high", "60")):  # a refused request: the server's line, no prefixes
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "generate").click()
    wait_for(browser, "window.lastError.startsWith('keys')")
    error = browser.execute_script("return window.lastError")
    assert "allowed: 21 <= low <= high <= 108" in error and "Value error" not in error


def test_marked_keys_are_regenerated_and_both_versions_open(page_app, browser):
    from selenium.webdriver.common.by import By

    base, root = page_app
    browser.get(base + "/")
    wait_for(browser, "document.getElementById('family').options.length > 0")
    for field, value in (("seed", "3"), ("low", "60"), ("high", "62")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "generate").click()
    wait_for(browser, "window.instrumentReady === true")
    parent = browser.execute_script("return state.instrument.id")
    browser.find_element(By.ID, "mark").click()
    for pitch in (60, 62):  # mark two keys
        browser.find_element(By.CSS_SELECTOR, f'.key[data-pitch="{pitch}"]').click()
    assert browser.find_element(By.ID, "marked").text == "marked: 60, 62"
    assert len(browser.find_elements(By.CSS_SELECTOR, ".key.marked")) == 2
    browser.find_element(By.ID, "regenerate").click()
    wait_for(browser, "window.instrumentReady === true && state.instrument.parent !== undefined")
    child = browser.execute_script("return state.instrument")
    assert child["parent"] == parent and child["id"] != parent
    assert sorted({p for p, _ in child["regenerated"]}) == [60, 62]
    notes = lambda i, name: (root / i / "notes" / name).read_bytes()  # noqa: E731
    assert notes(child["id"], "061_v100.wav") == notes(parent, "061_v100.wav")
    assert notes(child["id"], "060_v100.wav") != notes(parent, "060_v100.wav")
    browser.find_element(By.ID, "show-parent").click()
    wait_for(browser, f"window.instrumentReady === true && state.instrument.id === '{parent}'")
    browser.find_element(By.ID, "show-child").click()
    wait_for(browser, f"window.instrumentReady === true && state.instrument.id === '{child['id']}'")


def test_an_uploaded_file_and_a_library_instrument_open_on_the_page(page_app, browser, tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile as sf
    from selenium.webdriver.common.by import By

    from instrumentgen.instruments.library import INDEX_COLUMNS

    base, root = page_app
    recording = tmp_path / "cue.wav"
    sf.write(recording, 0.3 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000), 16000)
    browser.get(base + "/")
    wait_for(browser, "document.getElementById('family').options.length > 0")
    browser.find_element(By.CSS_SELECTOR, "input[name=cue][value=file]").click()
    browser.find_element(By.ID, "file").send_keys(str(recording))  # the file chooser
    for field, value in (("seed", "5"), ("low", "60"), ("high", "61")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "generate").click()
    wait_for(browser, "window.instrumentReady === true")
    uploaded = browser.execute_script("return state.instrument")
    assert uploaded["request"]["reference_audio_url"].startswith("sha256:") and len(uploaded["notes"]) == 10
    assert (root / uploaded["id"] / "reference.audio").read_bytes() == recording.read_bytes()

    library = root / "library"
    shutil.copytree(root / uploaded["id"], library / "00112233445566ff")  # as jobs.render leaves one
    row = {"id": "00112233445566ff", "name": "Uploaded", "prompt": "from a recording", "tc": 0.2, "clap_score": 0.3}
    table = pa.Table.from_pylist([{k: row.get(k) for k in INDEX_COLUMNS}], schema=pa.schema(INDEX_COLUMNS))
    pq.write_table(table, library / "index.parquet")
    browser.find_element(By.ID, "library-text").send_keys("RECORDING")
    browser.find_element(By.ID, "library-list").click()
    wait_for(browser, "document.querySelectorAll('#library-entries button').length === 1")
    assert browser.find_element(By.ID, "library-total").text == "1 instruments"
    browser.execute_script("window.instrumentReady = false")
    browser.find_element(By.CSS_SELECTOR, '#library-entries button[data-id="00112233445566ff"]').click()
    wait_for(browser, "window.instrumentReady === true && state.instrument.id === '00112233445566ff'")
    browser.find_element(By.CSS_SELECTOR, '.key[data-pitch="60"]').click()
    wait_for(browser, "window.lastPlayed && window.lastPlayed.url.startsWith('/v1/library/00112233445566ff/')")
    assert browser.execute_script("return window.lastPlayed.status") == 200
