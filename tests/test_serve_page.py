"""The chat page of ``serve`` in a real browser: headless Chromium, driven by Selenium, types a
prompt, the answer streams in piece by piece and ends as the API's own answer, and a
screenshot of the page is not blank. Skipped, saying why, where Chromium is not installed
(``apt-get install chromium chromium-driver``; ``.ci/run`` installs it)."""

from __future__ import annotations

import io
import shutil

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="the page test needs selenium (dev)")
pytest.importorskip("fastapi", reason="serve needs the serve extra (fastapi, uvicorn)")
Image = pytest.importorskip("PIL.Image", reason="the screenshot check needs Pillow")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serve_server import KEY, MODEL, post, running_server, write_checkpoint  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium is not installed (apt-get install chromium chromium-driver)",
)
PROMPT = "Tell me a story"
MAX_TOKENS = 40

# Records the answer's length at every change, from before Send is clicked: the lengths show
# whether the text arrived in pieces (streamed) or all at once.
WATCH_ANSWER = """
window.answerLengths = [];
new MutationObserver(() => {
  window.answerLengths.push(document.getElementById('answer').textContent.length);
}).observe(document.getElementById('answer'),
           {childList: true, characterData: true, subtree: true});
"""


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,800",
                 "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def set_field(driver, field: str, value: str) -> None:
    element = driver.find_element(By.ID, field)
    element.clear()
    element.send_keys(value)


def test_the_page_streams_an_answer_and_shows_the_model_card(tmp_path, browser):
    ckpt = write_checkpoint(tmp_path / "chat.ckpt")
    with running_server(ckpt, f"--api_key={KEY}", f"--model_name={MODEL}") as url:
        messages = [{"role": "user", "content": PROMPT}]
        body = {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}
        status, expected = post(f"{url}/v1/chat/completions", body)
        assert status == 200
        expected_text = expected["choices"][0]["message"]["content"]

        browser.get(url + "/")
        set_field(browser, "api_key", KEY)
        browser.find_element(By.ID, "prompt").click()  # the key field's change loads the card
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.ID, "model-name").text == MODEL)
        card = browser.find_element(By.ID, "card").text
        assert "bytes+chat" in card and "parameters" in card

        set_field(browser, "temperature", "0")
        set_field(browser, "max_tokens", str(MAX_TOKENS))
        browser.find_element(By.ID, "prompt").send_keys(PROMPT)
        browser.execute_script(WATCH_ANSWER)
        browser.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("finished"))

        answer = browser.execute_script("return document.getElementById('answer').textContent")
        assert answer == expected_text
        lengths = [n for n in browser.execute_script("return window.answerLengths") if n]
        assert len(set(lengths)) > 2, lengths  # the text grew piece by piece
        assert lengths == sorted(lengths)

        png = browser.get_screenshot_as_png()
        (tmp_path / "page.png").write_bytes(png)
        image = Image.open(io.BytesIO(png)).convert("RGB")
        colours = image.getcolors(maxcolors=1 << 20)
        assert len(colours) > 50  # text, boxes and a header, not a blank page
        assert max(count for count, _ in colours) < 0.9 * image.width * image.height
