"""The web page's "not sure" heads, in headless Chromium against a real ``anibot api`` process: no worker and no
models, the answer is a result seeded in the result cache (tests/cached_answers.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, TEST_REDIS_URL, wait_for
from tests.test_web_browser import (  # skips this module too where there is no headless Chromium or selenium
    CHROME_ARGS,
    CHROMEDRIVER,
    CHROMIUM,
    By,
    Service,
    WebDriver,
    free_port,
    picture_shown,
    result_cards,
    stop,
    until,
    webdriver,
)

pytestmark = pytest.mark.queue

TOKEN = "web-not-sure-token-0123456789"


@pytest.fixture
def page(redis_kv, tmp_path: Path) -> Iterator[tuple[str, object]]:  # type: ignore[no-untyped-def]
    """The API's base URL over a seeded stack, and the stack."""
    from tests.cached_answers import SeededStack

    stack = SeededStack(tmp_path)
    settings = stack.settings()
    port = free_port()
    env = {
        **os.environ,
        "ANIBOT_MODELS_DIR": str(settings.models_dir),
        "ANIBOT_DATA_DIR": str(settings.data_dir),
        "ANIBOT_DATABASE_URL": settings.database_url,
        "ANIBOT_REDIS_URL": TEST_REDIS_URL,
        "ANIBOT_API_TOKEN": TOKEN,
        "ANIBOT_JOB_WAIT_TIMEOUT_S": "10",
    }
    log_path = tmp_path / "api.log"
    with log_path.open("ab") as log:
        api = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        import urllib.error
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def healthy() -> bool:  # 503 without a worker: the page is served all the same
            try:
                with opener.open(f"{base}/v1/health", timeout=5) as response:
                    return response.status == 200
            except urllib.error.HTTPError as error:
                return error.code == 503
            except OSError:
                return False

        if not wait_for(lambda: api.poll() is None and healthy(), 120, 0.5):
            raise RuntimeError("the API did not come up:\n" + log_path.read_text(errors="replace")[-3000:])
        yield base, stack
    finally:
        stop(api)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (*CHROME_ARGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_says_not_sure_and_keeps_the_guesses_folded(page, chromium, tmp_path):
    from tests.cached_answers import picture

    base, stack = page
    data = picture(7_700_301)
    stack.seed(data)  # type: ignore[attr-defined]
    upload = tmp_path / "three.png"
    upload.write_bytes(data)

    chromium.get(f"{base}/web/#/analyse")
    until(
        chromium,
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-page") == "analyse",
        20,
        "page",
    )
    chromium.find_element(By.ID, "token-input").send_keys(TOKEN)
    chromium.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    chromium.find_element(By.CSS_SELECTOR, ".analyse .drop-zone input[type=file]").send_keys(str(upload))

    def done(d: WebDriver):  # type: ignore[no-untyped-def]
        cards = result_cards(d)
        ready = cards and "done" in (cards[0].get_attribute("class") or "") and picture_shown(d, cards[0])
        return cards[0] if ready else None

    card = until(chromium, done, 30, "the answer")
    names = [e.text for e in card.find_elements(By.CSS_SELECTOR, ".head-item .head-name")]
    assert names == ["Hatsune Miku (91%, both agree)", "not sure", "not sure"]
    items = card.find_elements(By.CSS_SELECTOR, ".head-item")
    assert "Kagamine Rin" in items[0].text  # a named head's candidates are shown
    folded = card.find_elements(By.CSS_SELECTOR, ".head-item details.guesses")
    assert len(folded) == 2
    assert not any(f.find_element(By.CSS_SELECTOR, ".candidates").is_displayed() for f in folded)
    assert "Hoshino Ai" not in items[1].text
    folded[0].find_element(By.TAG_NAME, "summary").click()
    guesses = folded[0].find_element(By.CSS_SELECTOR, ".candidates")
    until(chromium, lambda d: guesses.is_displayed(), 5, "the guesses")
    assert "Hoshino Ai" in guesses.text and "38%" in guesses.text
    boxes = card.find_elements(By.CSS_SELECTOR, ".head-box")
    assert [b.get_attribute("aria-label").split(".")[0] for b in boxes] == [
        "Head 1: Hatsune Miku (91%, both agree)",
        "Head 2: not sure",
        "Head 3: not sure",
    ]
