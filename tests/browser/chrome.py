"""A real `jobpub web` process and Debian's headless Chromium driven by Selenium.

Shared by the browser tests and scripts/screenshots.py. Selenium is given the system
chromedriver and browser paths, so Selenium Manager never downloads anything.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from testbed.waiting import wait_until

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def web_process(db_url: str, log_path: Path, **settings: str) -> Iterator[str]:
    """`jobpub web` on a free port of 127.0.0.1 until the block ends; yields its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPUB_")}
    env.update(
        JOBPUB_DATABASE_URL=db_url,
        JOBPUB_WEB_HOST="127.0.0.1",
        JOBPUB_WEB_PORT=str(port),
        JOBPUB_LOG_FORMAT="json",
    )
    env.update({f"JOBPUB_{name.upper()}": value for name, value in settings.items()})
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "jobpub", "web"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_until(
                lambda: _answers(port) or process.poll() is not None, 20, "jobpub web to listen"
            )
            if process.poll() is not None:
                raise AssertionError(f"jobpub web exited: {log_path.read_text()}")
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@contextlib.contextmanager
def chrome(width: int = 1280, height: int = 900) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
