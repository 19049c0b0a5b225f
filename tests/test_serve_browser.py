"""The chat page in a real browser: headless Chromium (the OS package) opens it, sends a prompt, and the reply
streams in piece by piece."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.serve_fixtures import serve_checkpoint, served  # noqa: F401  (a fixture)
from tests.test_serve_api import slow_steps

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromedriver (apt: chromium-driver)")
def test_chat_page_streams_a_reply(serve_checkpoint: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    with served(serve_checkpoint, max_batch=2) as s:
        slow_steps(s.engine, 0.03)  # slow enough to see the reply grow
        driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
        try:
            driver.get(s.url)
            wait = WebDriverWait(driver, 30, poll_frequency=0.01)
            wait.until(lambda d: "context" in d.find_element(By.ID, "model").text)  # /v1/models answered
            driver.execute_script("document.getElementById('max_tokens').value = '40'")  # inside closed <details>
            driver.find_element(By.ID, "prompt").send_keys("Hello there")
            driver.find_element(By.ID, "send").click()

            def reply() -> str:
                return driver.execute_script(
                    "const r = document.querySelector('.assistant'); return r && r.textContent"
                )

            lengths = []  # the reply's length, sampled while it streams
            deadline = time.monotonic() + 30
            while driver.find_element(By.ID, "send").get_attribute("disabled") and time.monotonic() < deadline:
                lengths.append(len(reply() or ""))
                time.sleep(0.02)
            final = reply()
            assert driver.find_element(By.CSS_SELECTOR, ".user").text == "Hello there"
            assert final and not driver.find_elements(By.CSS_SELECTOR, ".error"), final
            partial = {n for n in lengths if 0 < n < len(final)}
            assert partial, f"the reply appeared all at once: {lengths}"
        finally:
            driver.quit()
