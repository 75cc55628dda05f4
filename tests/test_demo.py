"""The demo page in a real headless browser: the app runs as a user starts it (`python demo/app.py --vlp FOLDER ...`)
on four saved miniature models, and each tab is used as a person would: pick an example, press the button, read
the page. What appears must be what the model computes for that input in this process."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the demo page needs the `demo` extra: pip install -e '.[demo]'")
pytest.importorskip("selenium", reason="the browser test drives chromium with selenium (in the `test` extra)")

from selenium.webdriver.common.by import By  # noqa: E402

from tiny_models import build_all, save_all  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demo"))
import app as demo_app  # noqa: E402
import browser as demo_browser  # noqa: E402
from browser import has_images, open_tab, press, text_of, use_captioning, use_retrieval, use_science, use_sign, wait_for  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        demo_browser.CHROMIUM is None or demo_browser.CHROMEDRIVER is None,
        reason="no headless browser: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]


@pytest.fixture(scope="module")
def models(tokenizer):
    return build_all(tokenizer)


@pytest.fixture(scope="module")
def browser(models, tmp_path_factory):
    """Chromium on the app serving the saved models, started with the README's command."""
    folder = tmp_path_factory.mktemp("demo")
    arguments = [f"--{name}={path}" for name, path in save_all(models, folder / "models").items()]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(folder / "modules"), "OMP_NUM_THREADS": "1"}
    with demo_browser.running_app(arguments, folder / "app.log", env) as url, demo_browser.chromium(url) as driver:
        yield driver


def in_order(text: str, parts: list[str]) -> bool:
    positions = [text.find(part) for part in parts]
    return -1 not in positions and positions == sorted(positions)


def test_retrieval_tab_shows_the_best_pictures_and_captions(browser, models):
    tab = demo_app.RetrievalTab(*models["vlp"])
    use_retrieval(browser, "a blue star near the top", "Example 2")
    expected_scores = [label for _, label in tab.images_for_text("a blue star near the top")]
    assert len(has_images(browser, "retrieval-gallery")) == len(expected_scores) == 4
    assert in_order(browser.find_element(By.ID, "retrieval-gallery").text, expected_scores)
    expected = [caption for caption, _ in tab.captions_for_image(tab.examples[1]["image"])]
    wait_for(browser, lambda: in_order(browser.find_element(By.ID, "retrieval-captions").text, expected), "the best captions")


def test_captioning_tab_shows_the_caption_and_the_retrieved_captions(browser, models):
    tab = demo_app.CaptioningTab(*models["rag"])
    use_captioning(browser, "Example 3")
    caption, neighbours = tab.caption(tab.examples[2]["image"])
    assert caption.strip()
    wait_for(browser, lambda: text_of(browser, "caption-text") == caption, f"the caption {caption!r}")
    assert in_order(browser.find_element(By.ID, "caption-neighbours").text, [text for text, _ in neighbours])


def test_sign_tab_translates_an_example_clip_and_draws_its_pose(browser, models):
    tab = demo_app.SignTab(*models["sign2text"])
    use_sign(browser, "Example 4")
    translation, reference, _ = tab.translate("Example 4", None)
    assert translation.strip()
    wait_for(browser, lambda: text_of(browser, "sign-text") == translation, f"the translation {translation!r}")
    assert text_of(browser, "sign-reference") == reference == str(tab.examples[3]["sentence"])
    wait_for(browser, lambda: has_images(browser, "sign-pose"), "the pose drawing")


def test_sign_tab_translates_an_uploaded_npy(browser, models, tmp_path):
    tab = demo_app.SignTab(*models["sign2text"])
    path = tmp_path / "my_clip.npy"
    np.save(path, tab.examples[5]["keypoints"][::2])  # a clip of the user's: every other frame of an example
    open_tab(browser, "Sign clip → text")
    browser.find_element(By.CSS_SELECTOR, "#sign-upload input[type=file]").send_keys(str(path))
    wait_for(browser, lambda: "my_clip" in browser.find_element(By.ID, "sign-upload").text, "the uploaded file")
    press(browser, "sign-run")
    translation, reference, _ = tab.translate(None, str(path))
    assert translation.strip() and reference == ""
    # the tiny model may translate the example shown before alike: the cleared reference says the page updated
    wait_for(
        browser,
        lambda: text_of(browser, "sign-text") == translation and text_of(browser, "sign-reference") == "",
        f"the translation {translation!r} with no reference",
    )


def test_science_tab_fills_an_example_and_shows_rationale_and_answer(browser, models):
    tab = demo_app.ScienceTab(*models["mmcot"])
    use_science(browser, "Example 1")
    question, options, context, image = tab.fill("Example 1")
    assert text_of(browser, "science-question") == question and text_of(browser, "science-options") == options
    rationale, answer = tab.solve(question, options, context, image)
    assert rationale.strip() and answer.strip()
    wait_for(browser, lambda: text_of(browser, "science-answer") == answer, f"the answer {answer!r}")
    assert text_of(browser, "science-rationale") == rationale


def test_a_missing_input_shows_what_to_do(browser):
    browser.refresh()  # the pictures chosen by the tests above are gone
    wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "button[role=tab]"), "the page")
    open_tab(browser, "Captioning")
    press(browser, "caption-run")
    wait_for(browser, lambda: "Upload an image or pick an example first." in demo_browser.page_text(browser), "the message")


def test_screenshots_of_every_tab(browser, tmp_path):
    written = demo_browser.take_screenshots(browser, tmp_path)
    assert [path.name for path in written] == ["demo-retrieval.png", "demo-captioning.png", "demo-sign.png", "demo-science.png"]
    assert all(path.stat().st_size > 10_000 for path in written)
