"""Debian's chromium, headless, driven by selenium: the live page's test and benchmark share it.

Needs `apt-get install chromium chromium-driver` (.ci/run does it) and the `test` extra.
Chromium starts with the flags this sandbox needs: no sandbox as root, no GPU, and none of
the background connections a closed network refuses.
"""

import importlib.util
import os
import shutil
import time

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--autoplay-policy=no-user-gesture-required", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic")


def missing() -> str:
  """Why the browser cannot start here ("" when it can)."""
  if not (shutil.which("chromium") and shutil.which("chromedriver")):
    return "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
  if importlib.util.find_spec("selenium") is None:
    return "selenium is not installed (pip install -e '.[test]')"
  return ""


def start(user_data_dir: str):
  """A headless chromium with a fresh profile in `user_data_dir`."""
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  os.environ.setdefault("SE_AVOID_STATS", "true")
  opts = webdriver.ChromeOptions()
  opts.binary_location = shutil.which("chromium")
  for flag in FLAGS + (f"--user-data-dir={user_data_dir}",):
    opts.add_argument(flag)
  service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
  return webdriver.Chrome(options=opts, service=service)


def wait_for(driver, script: str, timeout: float = 90.0):
  """The first truthy value of `script` (JavaScript returning a value), polled every 0.1 s.

  Raises:
    AssertionError: none within `timeout` seconds; the message holds the page's stats.
  """
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = driver.execute_script(script)
    if value:
      return value
    time.sleep(0.1)
  stats = driver.execute_script("return JSON.stringify(window.avflow)")
  raise AssertionError(f"timed out waiting for `{script}`; page stats: {stats}")
