"""docs/report_screenshot.png: the compliance report of a small digits run with
distributed DP and secure aggregation, as headless Chromium shows it.

The run is the digits example's task (examples/digits/app.py: scikit-learn's 8x8 digits,
the example's MLP) over 10 virtual sites for 10 rounds, the distributed discrete Gaussian
summed by SecAgg+ at sample rate 0.8, every site requiring secure aggregation and
declaring the same data-use agreement; it takes well under a minute on two cores. Needs
the dev extra (selenium) and Debian's chromium and chromium-driver.

    python scripts/report_screenshot.py [--out docs/report_screenshot.png] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from consortia.monitor.report import write_report
from consortia.simulation import simulate

REPO = Path(__file__).resolve().parent.parent
JOB = """
name = "digits-distributed-dp-secagg"
rounds = 10
seed = 0

[task]
framework = "torch"
app = "app.py"
loss = "cross_entropy"

[train]
local_epochs = 2
batch_size = 16
lr = 0.05

[strategy]
min_sites = 1

[evaluation]
central_every = 1

[privacy]
mode = "distributed"
sample_rate = 0.8
clip_norm = 1.0
noise_multiplier = 0.7
delta = 1e-5

[secure_aggregation]

[simulation]
sites = 10
workers = 2

[simulation.partition]
method = "iid"

[simulation.site_policy]
max_epsilon = 200.0
require_secure_aggregation = true

[simulation.site_policy.data_use_agreement]
reference = "DUA-2026-017"
purpose = "handwritten digit recognition research"
parties = ["clinic-north", "clinic-south", "coordinator"]
expires = 2027-12-31
"""


def screenshot(page: Path, out: Path, width: int = 1000) -> None:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},900")
    options.add_experimental_option(
        "prefs", {"profile.managed_default_content_settings.javascript": 2}
    )
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(page.resolve().as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, height + 200)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "report_screenshot.png")
    parser.add_argument("--keep", type=Path, help="make the run here and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="report-shot-"))
    try:
        work.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "examples" / "digits" / "app.py", work / "app.py")
        (work / "job.toml").write_text(JOB)
        simulate(work / "job.toml", out=work / "run")
        html, _, report = write_report(work / "run")
        screenshot(html, args.out)
        privacy = report["sections"]["privacy"]["epsilon"]
        accuracy = report["sections"]["accuracy"]["curves"][0]["points"][-1][1]
        print(f"{args.out}: final accuracy {accuracy:.3f}, epsilon {privacy['best']:.2f}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
