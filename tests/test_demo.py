"""The demo page in a real headless browser: the app runs as a user starts it (`python demo/app.py --vlp FOLDER ...`)
on four saved miniature models, and each tab is used as a person would: pick an example, press the button, read
the page. What appears must be what the model computes for that input in this process."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the demo page needs the `demo` extra: pip install -e '.[demo]'")
pytest.importorskip("selenium", reason="the browser test drives chromium with selenium: pip install -e '.[demo,test]'")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tiny_models import build_all, save_all  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "demo"))
import app as demo_app  # noqa: E402

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="no headless browser: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]
# Screenshots of each tab go here when set (the README's come from a run on the trained models), else to tmp.
SCREENSHOT_DIR = os.environ.get("DEMO_SCREENSHOT_DIR")
TIMEOUT = 60


@pytest.fixture(scope="module")
def models(tokenizer):
    return build_all(tokenizer)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def page_url(models, tmp_path_factory):
    """The app serving the saved models, started with the README's command and stopped after the tests."""
    folder = tmp_path_factory.mktemp("demo")
    folders = save_all(models, folder / "models")
    port = free_port()
    arguments = [f"--{name}={path}" for name, path in folders.items()]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(folder / "modules"), "OMP_NUM_THREADS": "1"}
    log = (folder / "app.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "demo" / "app.py"), *arguments, "--port", str(port)],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"the demo exited with {process.returncode}:\n{(folder / 'app.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the demo did not answer within 180 s:\n{(folder / 'app.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser(page_url):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.get(page_url)
    WebDriverWait(driver, TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "button[role=tab]"))
    yield driver
    driver.quit()


def open_tab(browser, title: str) -> None:
    tab = next(tab for tab in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if tab.text == title)
    tab.click()
    WebDriverWait(browser, TIMEOUT).until(lambda d: tab.get_attribute("aria-selected") == "true")


def pick_example(browser, group: str, name: str) -> None:
    browser.find_element(By.CSS_SELECTOR, f"#{group} label[data-testid='{name}-radio-label']").click()


def press(browser, button: str) -> None:
    browser.find_element(By.ID, button).click()


def text_of(browser, textbox: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, f"#{textbox} textarea, #{textbox} input").get_attribute("value")


def wait_for(browser, condition, what: str):
    try:
        return WebDriverWait(browser, TIMEOUT).until(lambda d: condition())
    except Exception as error:  # a timeout: say what never appeared, with the page's text
        raise AssertionError(f"{what} never appeared; the page shows:\n{browser.find_element(By.TAG_NAME, 'body').text[:2000]}") from error


def screenshot(browser, name: str, tmp_path: Path) -> None:
    folder = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(folder / f"demo-{name}.png"))


def in_order(text: str, parts: list[str]) -> bool:
    positions = [text.find(part) for part in parts]
    return -1 not in positions and positions == sorted(positions)


def test_retrieval_tab_shows_the_best_pictures_and_captions(browser, models, tmp_path):
    tab = demo_app.RetrievalTab(*models["vlp"])
    open_tab(browser, "Image ↔ text retrieval")
    query = browser.find_element(By.CSS_SELECTOR, "#retrieval-query textarea, #retrieval-query input")
    query.clear()
    query.send_keys("a blue star near the top")
    press(browser, "retrieval-search")
    pictures = wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#retrieval-gallery img") or None, "the gallery")
    expected_scores = [label for _, label in tab.images_for_text("a blue star near the top")]
    assert len(pictures) == len(expected_scores) == 4
    assert in_order(browser.find_element(By.ID, "retrieval-gallery").text, expected_scores)

    pick_example(browser, "retrieval-examples", "Example 2")
    wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#retrieval-image img"), "the example picture")
    press(browser, "retrieval-describe")
    expected = [caption for caption, _ in tab.captions_for_image(tab.examples[1]["image"])]
    wait_for(browser, lambda: in_order(browser.find_element(By.ID, "retrieval-captions").text, expected), "the best captions")
    screenshot(browser, "retrieval", tmp_path)


def test_captioning_tab_shows_the_caption_and_the_retrieved_captions(browser, models, tmp_path):
    tab = demo_app.CaptioningTab(*models["rag"])
    open_tab(browser, "Captioning")
    pick_example(browser, "caption-examples", "Example 3")
    wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#caption-image img"), "the example picture")
    press(browser, "caption-run")
    caption, neighbours = tab.caption(tab.examples[2]["image"])
    assert caption.strip()
    wait_for(browser, lambda: text_of(browser, "caption-text") == caption, f"the caption {caption!r}")
    assert in_order(browser.find_element(By.ID, "caption-neighbours").text, [text for text, _ in neighbours])
    screenshot(browser, "captioning", tmp_path)


def test_sign_tab_translates_an_example_clip_and_draws_its_pose(browser, models, tmp_path):
    tab = demo_app.SignTab(*models["sign2text"])
    open_tab(browser, "Sign clip → text")
    pick_example(browser, "sign-examples", "Example 4")
    press(browser, "sign-run")
    translation, reference, _ = tab.translate("Example 4", None)
    assert translation.strip()
    wait_for(browser, lambda: text_of(browser, "sign-text") == translation, f"the translation {translation!r}")
    assert text_of(browser, "sign-reference") == reference == str(tab.examples[3]["sentence"])
    wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#sign-pose img"), "the pose drawing")
    screenshot(browser, "sign", tmp_path)


def test_science_tab_fills_an_example_and_shows_rationale_and_answer(browser, models, tmp_path):
    tab = demo_app.ScienceTab(*models["mmcot"])
    open_tab(browser, "Science question → answer")
    pick_example(browser, "science-examples", "Example 1")
    question, options, context, image = tab.fill("Example 1")
    wait_for(browser, lambda: text_of(browser, "science-question") == question, "the example question")
    assert text_of(browser, "science-options") == options
    press(browser, "science-run")
    rationale, answer = tab.solve(question, options, context, image)
    assert rationale.strip() and answer.strip()
    wait_for(browser, lambda: text_of(browser, "science-answer") == answer, f"the answer {answer!r}")
    assert text_of(browser, "science-rationale") == rationale
    screenshot(browser, "science", tmp_path)


def test_a_bad_input_shows_the_processors_message(browser):
    open_tab(browser, "Captioning")
    browser.refresh()  # the picture from the earlier test is gone: no input at all
    WebDriverWait(browser, TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "button[role=tab]"))
    open_tab(browser, "Captioning")
    press(browser, "caption-run")
    wait_for(browser, lambda: "Upload an image or pick an example first." in browser.find_element(By.TAG_NAME, "body").text, "the error message")
