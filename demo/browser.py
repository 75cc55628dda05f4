"""Drive the demo page in a headless chromium, as a person would; used by tests/test_demo.py and for the README's
screenshots:

    python demo/browser.py --out model_cards/figures -- --vlp outputs/vlp-images/final --sign2text outputs/sign2text/final

starts `demo/app.py` with the arguments after `--`, uses every tab with a model on its first embedded example and
saves `demo-<tab>.png` under `--out`. Needs selenium and Debian's chromium and chromium-driver.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

APP = Path(__file__).resolve().parent / "app.py"
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
TIMEOUT = 60
TAB_TITLES = {
    "retrieval": "Image ↔ text retrieval",
    "captioning": "Captioning",
    "sign": "Sign clip → text",
    "science": "Science question → answer",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_app(arguments: list[str], log_path: Path, env: dict | None = None, startup_s: float = 180):
    """`python demo/app.py ARGUMENTS --port P` until the context ends; yields its URL once it answers."""
    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(APP), *arguments, "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + startup_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the demo exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the demo did not answer within {startup_s} s:\n{log_path.read_text()[-3000:]}")
                    time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


@contextmanager
def chromium(url: str):
    """A headless chromium showing `url`, quit at the end."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url)
        WebDriverWait(driver, TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "button[role=tab]"))
        yield driver
    finally:
        driver.quit()


def page_text(browser) -> str:
    return browser.find_element(By.TAG_NAME, "body").text


def wait_for(browser, condition, what: str):
    """`condition()`'s first truthy value; an `AssertionError` naming `what` and showing the page after `TIMEOUT`."""
    try:
        return WebDriverWait(browser, TIMEOUT).until(lambda _: condition())
    except Exception as error:
        raise AssertionError(f"{what} never appeared; the page shows:\n{page_text(browser)[:2000]}") from error


def open_tab(browser, title: str) -> None:
    tab = next(tab for tab in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if tab.text == title)
    tab.click()
    wait_for(browser, lambda: tab.get_attribute("aria-selected") == "true", f"the tab {title!r}")


def pick_example(browser, group: str, name: str) -> None:
    browser.find_element(By.CSS_SELECTOR, f"#{group} label[data-testid='{name}-radio-label']").click()


def press(browser, button: str) -> None:
    browser.find_element(By.ID, button).click()


def text_of(browser, textbox: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, f"#{textbox} textarea, #{textbox} input").get_attribute("value")


def type_into(browser, textbox: str, text: str) -> None:
    field = browser.find_element(By.CSS_SELECTOR, f"#{textbox} textarea, #{textbox} input")
    field.clear()
    field.send_keys(text)


def has_images(browser, component: str):
    return browser.find_elements(By.CSS_SELECTOR, f"#{component} img") or None


def use_retrieval(browser, query: str, example: str) -> None:
    open_tab(browser, TAB_TITLES["retrieval"])
    type_into(browser, "retrieval-query", query)
    press(browser, "retrieval-search")
    wait_for(browser, lambda: has_images(browser, "retrieval-gallery"), "the gallery")
    pick_example(browser, "retrieval-examples", example)
    wait_for(browser, lambda: has_images(browser, "retrieval-image"), "the example picture")
    press(browser, "retrieval-describe")


def use_captioning(browser, example: str) -> None:
    open_tab(browser, TAB_TITLES["captioning"])
    pick_example(browser, "caption-examples", example)
    wait_for(browser, lambda: has_images(browser, "caption-image"), "the example picture")
    press(browser, "caption-run")


def use_sign(browser, example: str) -> None:
    open_tab(browser, TAB_TITLES["sign"])
    pick_example(browser, "sign-examples", example)
    press(browser, "sign-run")


def use_science(browser, example: str) -> None:
    open_tab(browser, TAB_TITLES["science"])
    pick_example(browser, "science-examples", example)
    wait_for(browser, lambda: text_of(browser, "science-question"), "the example question")
    press(browser, "science-run")


def take_screenshots(browser, folder: Path) -> list[Path]:
    """Use every tab that has a model on its first example; one screenshot per tab once its output is shown."""
    folder.mkdir(parents=True, exist_ok=True)
    steps = {
        "retrieval": (lambda: use_retrieval(browser, "a red circle in the middle", "Example 1"), "retrieval-captions", None),
        "captioning": (lambda: use_captioning(browser, "Example 1"), None, "caption-text"),
        "sign": (lambda: use_sign(browser, "Example 1"), None, "sign-text"),
        "science": (lambda: use_science(browser, "Example 1"), None, "science-answer"),
    }
    written = []
    for name, (use, table, textbox) in steps.items():
        open_tab(browser, TAB_TITLES[name])
        if "No model loaded" in page_text(browser):
            continue
        use()
        if table:
            wait_for(browser, lambda: len(browser.find_element(By.ID, table).text.splitlines()) > 2, f"the {name} results")
        else:
            wait_for(browser, lambda: text_of(browser, textbox), f"the {name} output")
        time.sleep(1)  # let pictures finish drawing
        path = folder / f"demo-{name}.png"
        browser.save_screenshot(str(path))
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="Folder for demo-<tab>.png.")
    parser.add_argument("app_arguments", nargs=argparse.REMAINDER, help="-- then demo/app.py's arguments.")
    args = parser.parse_args()
    app_arguments = args.app_arguments[1:] if args.app_arguments[:1] == ["--"] else args.app_arguments
    if CHROMIUM is None or CHROMEDRIVER is None:
        sys.exit("No chromium/chromedriver found: apt-get install chromium chromium-driver.")
    log = args.out.resolve() / "demo-app.log"
    args.out.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False"}
    with running_app(app_arguments, log, env) as url:
        with chromium(url) as browser:
            for path in take_screenshots(browser, args.out.resolve()):
                print(path)
    log.unlink()


if __name__ == "__main__":
    main()
