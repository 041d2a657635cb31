"""The report of a DP run, opened in a real browser: headless Chromium (Debian's package)
driven by selenium through Debian's chromedriver, with JavaScript turned off.

Each section's heading must be visible, the chart must be drawn with a size, and a
screenshot is kept in the test's folder. Without Chromium this test fails, and says how
to install it: CI installs it (.ci/run), so a skip would only hide a broken page.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consortia.monitor.report import write_report

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver"


@pytest.fixture
def browser() -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: this test needs Debian's {INSTALL}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail('selenium is not installed: pip install -e ".[dev]" installs it')
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1100,900")
    # The page must need no script: the browser runs none.
    options.add_experimental_option(
        "prefs", {"profile.managed_default_content_settings.javascript": 2}
    )
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_dp_report_renders_in_chromium(dp_run: Path, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    html_path, _, report = write_report(dp_run)
    browser.get(html_path.resolve().as_uri())
    name = report["sections"]["job"]["job_name"]
    assert browser.title == f"Compliance report: {name}"
    for key, section in report["sections"].items():
        heading = browser.find_element(By.CSS_SELECTOR, f"section#{key} > h2")
        browser.execute_script("arguments[0].scrollIntoView()", heading)
        assert heading.is_displayed(), key
        assert heading.text == section["title"], key
    chart = browser.find_element(By.CSS_SELECTOR, "section#accuracy svg")
    assert chart.is_displayed()
    assert chart.size["width"] > 100 and chart.size["height"] > 100
    assert len(chart.find_elements(By.CSS_SELECTOR, "circle")) == len(
        report["sections"]["accuracy"]["curves"][0]["points"]
    )
    verdict = browser.find_element(By.CSS_SELECTOR, "section#ledger p.ok")
    assert verdict.text.startswith("verified")
    assert browser.find_elements(By.TAG_NAME, "script") == []
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1100, height + 40)
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    # And the browser really ran no page script: what was seen above needed none.
    browser.get("data:text/html,<title>off</title><script>document.title='on'</script>")
    assert browser.title == "off"
