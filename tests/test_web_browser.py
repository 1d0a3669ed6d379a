"""The web page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium;
no browser download) against a real ``anibot api`` process, Redis and a Celery worker with the built models.

One stack and one browser for the module: the page analyses pictures (the annotated picture, its head boxes
and names, the tag sliders), refuses the admin pages without the admin token, and with it removes a character,
teaches it again from 5 pictures (one head chosen by a click) and a new scene of it is then named; the anime
page searches, shows details, recommendations and favourites. Screenshots of each page go to
``$ANIBOT_TEST_ARTIFACTS/web`` (default ``.cache/test-artifacts/web``)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "no headless Chromium: install it with `apt-get install -y chromium chromium-driver` (scripts/setup.sh "
        "does when run as root with the dev extra); the page's API routes are still tested in test_web_api.py "
        "and test_admin_api.py, its static files in test_pages.py",
        allow_module_level=True,
    )
pytest.importorskip("selenium", reason="selenium is in the dev extra: pip install -e '.[dev]'")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from core.datasets.synth import CAST_BY_KEY, render_portrait, render_scene  # noqa: E402
from core.vision.results import AnalysisResult  # noqa: E402
from tests.conftest import (  # noqa: E402
    REPO,
    TEST_REDIS_URL,
    TRAIN_JOB_WAIT_S,
    WorkerProcess,
    empty_redis,
    stack_env,
    wait_for,
)

pytestmark = pytest.mark.queue

USER_TOKEN = "web-user-token-0123456789"
ADMIN_TOKEN = "web-admin-token-0123456789"
WRONG_NAME = "Someone Else Entirely"  # a correction the admin then rejects
NATSU = CAST_BY_KEY["natsu"]  # the embedder's holdout: named only through the gallery
CHROME_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
WIDE = (1280, 1000)
PHONE_WIDTH = 375
ANALYSIS_S = 120


def artifacts_dir() -> Path:
    base = os.environ.get("ANIBOT_TEST_ARTIFACTS")
    folder = (Path(base) if base else REPO / ".cache" / "test-artifacts") / "web"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WebStack:
    base_url: str
    env: dict[str, str]
    worker: WorkerProcess
    api: subprocess.Popen[bytes]
    api_log: Path
    pictures: Path  # files the browser uploads

    def logs(self) -> str:
        return (
            "--- api ---\n"
            + self.api_log.read_text(errors="replace")[-3000:]
            + "\n--- worker ---\n"
            + self.worker.output()[-3000:]
        )


DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def http(stack: WebStack, path: str, token: str | None = None) -> tuple[int, Any]:
    """GET a route: its status and JSON body (status 0 while the server does not answer yet)."""
    request = urllib.request.Request(stack.base_url + path)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with DIRECT.open(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
    except (urllib.error.URLError, ConnectionError):
        return 0, {}


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    kv = empty_redis(TEST_REDIS_URL)
    root = tmp_path_factory.mktemp("web-stack")
    env = stack_env(built_models, root, TEST_REDIS_URL)
    worker = WorkerProcess(env, root / "worker.log", "gpu,cpu,train")
    port = free_port()
    api_env = {
        **os.environ,
        **env,
        "ANIBOT_API_TOKEN": USER_TOKEN,
        "ANIBOT_API_ADMIN_TOKEN": ADMIN_TOKEN,
        "ANIBOT_RATE_USER_BURST": "100",
        "ANIBOT_RATE_USER_PER_MIN": "600",
        "ANIBOT_RATE_CHAT_BURST": "100",
        "ANIBOT_RATE_CHAT_PER_MIN": "600",
        "ANIBOT_RATE_COMMAND_BURST": "100",
        "ANIBOT_RATE_COMMAND_PER_MIN": "600",
        "ANIBOT_JOB_WAIT_TIMEOUT_S": str(ANALYSIS_S),
    }
    api_log = root / "api.log"
    with api_log.open("ab") as log:
        api = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=api_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pictures = root / "pictures"
    pictures.mkdir()
    web = WebStack(f"http://127.0.0.1:{port}", env, worker, api, api_log, pictures)
    try:
        healthy = wait_for(lambda: api.poll() is None and http(web, "/v1/health")[0] == 200, 180, 0.5)
        if not healthy:
            raise RuntimeError("the web stack did not come up:\n" + web.logs())
        yield web
    finally:
        stop(api)
        worker.stop()
        kv.client.flushdb()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    profile = tempfile.mkdtemp(prefix="anibot-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (*CHROME_ARGS, f"--user-data-dir={profile}", f"--window-size={WIDE[0]},{WIDE[1]}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    downloads = Path(profile) / "downloads"
    downloads.mkdir()
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(30)
    driver.downloads = downloads  # type: ignore[attr-defined]
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# --- helpers --------------------------------------------------------------------------------------------


def until(
    driver: WebDriver,
    predicate: Callable[[WebDriver], Any],
    timeout_s: float,
    what: str,
    stack: WebStack | None = None,
) -> Any:
    """``predicate``'s first truthy answer; on a timeout the page's text (and the stack's logs) say why."""
    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.25).until(predicate)
    except TimeoutException:
        main = driver.find_element(By.ID, "main").text[-2000:]
        raise AssertionError(
            f"timed out waiting for {what}; the page says:\n{main}\n" + (stack.logs() if stack else "")
        ) from None


def open_page(driver: WebDriver, stack: WebStack, page: str) -> None:
    driver.get(f"{stack.base_url}/web/#/{page}")
    until(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-page") == page, 20, page)


def use_token(driver: WebDriver, token: str) -> None:
    box = driver.find_element(By.ID, "token-input")
    box.clear()
    box.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    until(
        driver, lambda d: d.execute_script("return localStorage.getItem('anibot.token')") == token, 5, "token"
    )


def save_png(path: Path, image: Any) -> Path:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def result_cards(driver: WebDriver) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, ".result-card")


def picture_shown(driver: WebDriver, card: WebElement) -> bool:
    return bool(
        driver.execute_script(
            "const img = arguments[0].querySelector('img.boxed-picture');"
            "return !!img && img.complete && img.naturalWidth > 0;",
            card,
        )
    )


def analyse(driver: WebDriver, stack: WebStack, *paths: Path) -> list[WebElement]:
    """Upload pictures on the Analyse page; the cards, oldest first, once every one is done with its picture."""
    open_page(driver, stack, "analyse")
    before = len(result_cards(driver))
    driver.execute_script(RECORD_STATUSES)
    picker = driver.find_element(By.CSS_SELECTOR, ".analyse .drop-zone input[type=file]")
    picker.send_keys("\n".join(str(p) for p in paths))

    def finished(d: WebDriver) -> list[WebElement] | None:
        cards = result_cards(d)
        if len(cards) < before + len(paths):
            return None
        new = list(reversed(cards[: len(paths)]))  # newest are prepended
        failed = [c for c in new if "failed" in (c.get_attribute("class") or "")]
        if failed:
            raise AssertionError("an analysis failed: " + failed[0].text + "\n" + stack.logs())
        done = all("done" in (c.get_attribute("class") or "") and picture_shown(d, c) for c in new)
        return new if done else None

    return until(driver, finished, ANALYSIS_S * len(paths), "the analyses", stack)


# every progress text the cards' live regions showed, in order (the stream's lines go by in a second or two)
RECORD_STATUSES = """
window.__statuses = [];
const seen = new WeakMap();
new MutationObserver(() => {
  for (const el of document.querySelectorAll('.result-card .status')) {
    if (seen.get(el) !== el.textContent) {
      seen.set(el, el.textContent);
      window.__statuses.push(el.textContent);
    }
  }
}).observe(document.querySelector('.results'), {subtree: true, childList: true, characterData: true});
"""


def statuses_shown(driver: WebDriver) -> list[str]:
    return list(driver.execute_script("return window.__statuses || []"))


def shown_names(card: WebElement) -> list[str]:
    return [e.text.rsplit(" (", 1)[0] for e in card.find_elements(By.CSS_SELECTOR, ".head-item .head-name")]


def shown_as(body: dict[str, Any]) -> list[str]:
    """The names the page should show for an answer: "not sure" below its sure threshold (and for unknown heads)."""
    result = AnalysisResult.from_dict(body["result"])
    return [h.name if h.is_sure(body["sure_threshold"]) else "not sure" for h in result.heads]


def downloaded_json(driver: WebDriver, card: WebElement) -> dict[str, Any]:
    """The card's "Download the JSON", clicked: the file the browser saved."""
    link = card.find_element(By.CSS_SELECTOR, "a.download")
    assert link.get_attribute("href").startswith("blob:")
    saved = driver.downloads / link.get_attribute("download")  # type: ignore[attr-defined]
    saved.unlink(missing_ok=True)
    link.click()
    assert wait_for(saved.exists, 15), f"{saved.name} was not downloaded"
    assert wait_for(lambda: saved.stat().st_size > 0 and _parses(saved), 5), saved.read_text()[:200]
    return json.loads(saved.read_text())


def _parses(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except ValueError:
        return False
    return True


def shown_tag_count(card: WebElement) -> int:
    return int(card.find_element(By.CSS_SELECTOR, ".tag-count").get_attribute("data-shown"))


def severe_console_errors(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def screenshot(driver: WebDriver, name: str) -> Path:
    """The whole page (not only the viewport) as ``<artifacts>/web/<name>.png``."""
    path = artifacts_dir() / f"{name}.png"
    content = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": content["width"], "height": min(content["height"], 8000), "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 1000 and path.read_bytes().startswith(b"\x89PNG")
    return path


# --- the tests ------------------------------------------------------------------------------------------


def test_the_page_loads_its_modules_under_the_csp_and_asks_for_the_token(stack, browser):
    open_page(browser, stack, "analyse")
    assert browser.title == "Analyse · anibot"
    assert (
        browser.find_element(By.CSS_SELECTOR, "[data-route=analyse]").get_attribute("aria-current") == "page"
    )
    browser_id = browser.execute_script("return localStorage.getItem('anibot.browser')")
    assert 22 <= len(browser_id) <= 64 and browser_id.replace("_", "").replace("-", "").isalnum()
    # an inline script is refused by the page's CSP: nothing but /web/ modules run
    blocked = browser.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.__inline = 1';"
        "document.body.append(s); return window.__inline === undefined;"
    )
    assert blocked
    # no token yet: the server wants one, and the anime page says so instead of failing silently
    open_page(browser, stack, "anime")
    until(
        browser, lambda d: "token" in d.find_element(By.CSS_SELECTOR, ".favourites").text.lower(), 20, "401"
    )
    browser.get(stack.base_url + "/")  # the root redirects to the page
    until(browser, lambda d: d.current_url.startswith(stack.base_url + "/web/#/analyse"), 10, "the redirect")
    errors = severe_console_errors(browser)
    assert len([m for m in errors if "Content Security Policy" in m]) == 1, errors  # the injected script only
    others = [m for m in errors if "Content Security Policy" not in m and "401" not in m]
    assert others == [], others  # the page's own modules ran clean (a 401 is the server asking for the token)


def test_analyse_shows_the_annotated_picture_names_and_live_tag_filters(stack, browser):
    cast = save_png(
        stack.pictures / "two-friends.png",
        render_scene(8_800_001, characters=["aoi", "momo"], size=(512, 384)).image,
    )
    other = save_png(
        stack.pictures / "one-more.png", render_scene(8_800_002, characters=["rin"], size=(448, 384)).image
    )
    open_page(browser, stack, "analyse")
    use_token(browser, USER_TOKEN)
    first, second = analyse(browser, stack, cast, other)  # several pictures: sent one after another

    for card, expected in ((first, {"Aoi Sakuragi", "Momo Haruno"}), (second, {"Rin Kurosawa"})):
        body = downloaded_json(browser, card)
        heads = body["result"]["heads"]
        assert heads, body
        # what the page shows is the analysis: one box a head, the names of the JSON
        assert len(card.find_elements(By.CSS_SELECTOR, ".head-box")) == len(heads)
        assert shown_names(card) == shown_as(body)
        assert set(shown_names(card)) & expected, (shown_names(card), expected)
        assert card.find_element(By.CSS_SELECTOR, ".rating").text == (body["result"]["rating"] or "none")
        assert card.find_element(By.CSS_SELECTOR, ".caption").text == (body["result"]["caption"] or "none")
        assert "Done" in card.find_element(By.CSS_SELECTOR, ".status").text
    # progress from the NDJSON stream: queued (with its place in line) before done, told to screen readers
    shown = statuses_shown(browser)
    assert any(t.startswith("Queued") for t in shown), shown
    assert first.find_element(By.CSS_SELECTOR, ".status").get_attribute("aria-live") == "polite"

    # "Wrong? Tell me who" on the second picture: recorded for an admin's review
    wrong = second.find_element(By.CSS_SELECTOR, "details.wrong")
    wrong.find_element(By.TAG_NAME, "summary").click()
    wrong.find_element(By.CSS_SELECTOR, "input[name=name]").send_keys(WRONG_NAME)
    wrong.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    answer = wrong.find_element(By.CSS_SELECTOR, ".form-answer")
    until(browser, lambda d: "review" in answer.text, 30, "the correction's answer", stack)

    # a head box shows its candidates on focus (keyboard) and stays open when clicked
    box = first.find_element(By.CSS_SELECTOR, ".head-box")
    popup = browser.find_element(By.ID, box.get_attribute("aria-controls"))
    assert not popup.is_displayed()
    browser.execute_script("arguments[0].focus()", box)
    until(browser, lambda d: popup.is_displayed(), 5, "the candidates on focus")
    assert box.get_attribute("aria-expanded") == "true"
    assert "%" in popup.text and popup.find_elements(By.CSS_SELECTOR, ".candidates li")
    box.click()
    assert box.get_attribute("aria-pressed") == "true"
    browser.find_element(By.TAG_NAME, "h2").click()  # focus leaves: a pinned box stays open
    assert popup.is_displayed()
    box.send_keys(Keys.ESCAPE)
    assert box.get_attribute("aria-pressed") == "false"

    # the general-tag slider filters the shown tags live, in the page
    general = [t for t in downloaded_json(browser, first)["result"]["tags"] if t["category"] == "general"]
    assert general, "the scene has no general tags"
    total = shown_tag_count(first)
    assert total == len(first.find_elements(By.CSS_SELECTOR, "li.tag")) and total >= len(general)
    slider = first.find_element(By.CSS_SELECTOR, "input.slider-general")
    assert "threshold" in first.find_element(By.CSS_SELECTOR, ".threshold-note").text
    middle = sorted(t["score"] for t in general)[len(general) // 2]
    for _ in range(round(middle * 100)):
        slider.send_keys(Keys.ARROW_RIGHT)
    floor = float(slider.get_attribute("value"))
    expected_general = sum(t["score"] >= floor for t in general)
    until(
        browser,
        lambda d: len(first.find_elements(By.CSS_SELECTOR, "li.tag-general")) == expected_general,
        5,
        "filter",
    )
    assert shown_tag_count(first) == total - len(general) + expected_general
    slider.send_keys(Keys.END)
    assert len(first.find_elements(By.CSS_SELECTOR, "li.tag-general")) == sum(
        t["score"] >= 1.0 for t in general
    )
    assert shown_tag_count(first) < total
    slider.send_keys(Keys.HOME)
    assert shown_tag_count(first) == total
    screenshot(browser, "analyse")


def test_the_admin_pages_and_routes_are_closed_without_the_admin_token(stack, browser):
    open_page(browser, stack, "admin")
    use_token(browser, USER_TOKEN)
    refusal = until(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".admin-refusal"), 20, "the admin refusal"
    )[0]
    assert refusal.get_attribute("role") == "alert"
    assert "closed" in refusal.text and "ANIBOT_API_ADMIN_TOKEN" in refusal.text
    assert not browser.find_elements(By.CSS_SELECTOR, ".admin-section")
    status, body = http(stack, "/v1/admin/characters", USER_TOKEN)
    assert status == 403 and body["error"]["code"] == "forbidden", body
    assert http(stack, "/v1/admin/characters")[0] == 401
    assert http(stack, "/v1/admin/whoami", USER_TOKEN)[0] == 403
    screenshot(browser, "admin-refused")


def _scene_with_a_smaller_natsu() -> Any:
    """A scene of Natsu and Rin where Natsu's head is not the largest: the admin must pick it by hand."""
    for seed in range(8_900_000, 8_900_200):
        scene = render_scene(seed, characters=["rin", "natsu"], size=(512, 384))
        rin, natsu = scene.heads
        if natsu.box.width * natsu.box.height < 0.7 * rin.box.width * rin.box.height and natsu.box.width > 40:
            return scene
    raise AssertionError("no scene with a smaller Natsu")


def _wait_job_done(browser: WebDriver, stack: WebStack, short_id: str) -> WebElement:
    def done(d: WebDriver) -> WebElement | None:
        rows = d.find_elements(By.CSS_SELECTOR, f"tr.job[data-job-id^='{short_id}']")
        if rows and rows[0].get_attribute("data-status") == "failed":
            raise AssertionError("the job failed: " + rows[0].text + "\n" + stack.logs())
        return rows[0] if rows and rows[0].get_attribute("data-status") == "done" else None

    return until(browser, done, TRAIN_JOB_WAIT_S, f"job {short_id} to finish in the jobs list", stack)


def _queued_job(browser: WebDriver, status: WebElement) -> str:
    text = until(browser, lambda d: "job " in status.text and status.text, 30, "the queued job")
    return text.split("job ", 1)[1].split(" ", 1)[0]


@pytest.mark.timeout(
    TRAIN_JOB_WAIT_S + 600
)  # the teaching job within TRAIN_JOB_WAIT_S, and the page around it
def test_an_admin_removes_and_teaches_a_character_from_five_pictures_and_it_is_named(stack, browser):
    label = f"{NATSU.name} ({NATSU.series})"
    open_page(browser, stack, "admin")
    use_token(browser, ADMIN_TOKEN)
    until(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#admin-characters li.character"),
        30,
        "characters",
    )
    slots = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#admin-models li.slot"), 30, "models")
    assert any("Active: none" not in s.text for s in slots)

    # the correction sent from the Analyse page waits in the review queue: rejected here
    review = until(
        browser,
        lambda d: [
            r for r in d.find_elements(By.CSS_SELECTOR, "#admin-review li.review") if WRONG_NAME in r.text
        ],
        30,
        "the correction in the review queue",
    )[0]
    review.find_element(By.XPATH, ".//button[text()='Reject']").click()
    until(browser, lambda d: "Rejected" in review.text, 30, "the rejection", stack)

    # remove Natsu through the page: its job runs and a scene of her is no longer named
    entry = browser.find_element(By.CSS_SELECTOR, f"li.character[data-name='{NATSU.name}']")
    entry.find_element(By.CSS_SELECTOR, f"button[aria-label='Remove {label}']").click()
    WebDriverWait(browser, 5).until(expected_conditions.alert_is_present())
    browser.switch_to.alert.accept()
    _wait_job_done(browser, stack, _queued_job(browser, entry.find_element(By.CSS_SELECTOR, ".form-answer")))
    until(
        browser,
        lambda d: not d.find_elements(By.CSS_SELECTOR, f"li.character[data-name='{NATSU.name}']"),
        20,
        "gone",
    )
    before = save_png(
        stack.pictures / "natsu-before.png",
        render_scene(8_700_001, characters=["natsu"], size=(448, 384)).image,
    )
    [card] = analyse(browser, stack, before)
    assert shown_names(card) == ["not sure"], card.text

    # add her from 5 pictures: 4 portraits, and a scene where the head to use is not the one chosen by default
    open_page(browser, stack, "admin")
    add = until(browser, lambda d: d.find_elements(By.ID, "admin-add"), 30, "the add form")[0]
    add.find_element(By.CSS_SELECTOR, "input[name=name]").send_keys(NATSU.name)
    add.find_element(By.CSS_SELECTOR, "input[name=series]").send_keys(NATSU.series)
    paths = [
        save_png(stack.pictures / f"natsu-{k}.png", render_portrait("natsu", 8_600_000 + k)) for k in range(4)
    ]
    scene = _scene_with_a_smaller_natsu()
    paths.append(save_png(stack.pictures / "natsu-and-rin.png", scene.image))
    add.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys("\n".join(map(str, paths)))
    previews = until(
        browser,
        lambda d: len(f := d.find_elements(By.CSS_SELECTOR, ".preview")) == 5 and f,
        120,
        "previews",
        stack,
    )
    for preview in previews[:4]:  # a portrait: its one head is chosen
        assert len(preview.find_elements(By.CSS_SELECTOR, ".head-box.chosen[aria-pressed=true]")) == 1, (
            preview.text
        )
    last = previews[4]
    heads = last.find_elements(By.CSS_SELECTOR, ".head-box")
    assert len(heads) >= 2, last.text
    [default] = [b for b in heads if b.get_attribute("aria-pressed") == "true"]
    natsu_box = scene.heads[1].box

    def overlap(button: WebElement) -> float:
        x1, y1, x2, y2 = map(float, button.get_attribute("data-box").split(","))
        ix, iy = (
            max(0.0, min(x2, natsu_box.x2) - max(x1, natsu_box.x1)),
            max(0.0, min(y2, natsu_box.y2) - max(y1, natsu_box.y1)),
        )
        return ix * iy / ((x2 - x1) * (y2 - y1) + natsu_box.width * natsu_box.height - ix * iy)

    natsu_button = max(heads, key=overlap)
    assert natsu_button != default and overlap(natsu_button) > 0.5
    whole = last.find_element(By.CSS_SELECTOR, "button.whole-picture")
    whole.click()
    assert whole.get_attribute("aria-pressed") == "true" and default.get_attribute("aria-pressed") == "false"
    assert "whole picture" in last.find_element(By.CSS_SELECTOR, ".choice-caption").text
    natsu_button.send_keys(Keys.ENTER)  # keyboard-operable
    assert natsu_button.get_attribute("aria-pressed") == "true"
    assert whole.get_attribute("aria-pressed") == "false"
    add.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    row = _wait_job_done(browser, stack, _queued_job(browser, add.find_element(By.CSS_SELECTOR, ".status")))
    assert "characters.add" in row.text
    assert not row.find_element(By.CSS_SELECTOR, "button").is_displayed()  # nothing to cancel once done

    # listed again, with its 5 reference thumbnails
    entry = until(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, f"li.character[data-name='{NATSU.name}']"),
        30,
        "natsu back",
    )[0]
    until(
        browser,
        lambda d: (
            d.execute_script(
                "return [...arguments[0].querySelectorAll('img.thumb')]"
                ".filter(i => i.complete && i.naturalWidth > 0).length",
                entry,
            )
            == 5
        ),
        30,
        "5 thumbnails",
    )
    screenshot(browser, "admin")

    after = save_png(
        stack.pictures / "natsu-after.png",
        render_scene(8_700_002, characters=["natsu"], size=(448, 384)).image,
    )
    [card] = analyse(browser, stack, after)
    assert shown_names(card) == [NATSU.name], card.text

    # one reference removed through its thumbnail's button: 4 are left
    open_page(browser, stack, "admin")
    entry = until(
        browser,
        lambda d: d.find_elements(
            By.CSS_SELECTOR, f"li.character[data-name='{NATSU.name}'] .thumb-item button"
        ),
        30,
        "the reference buttons",
    )[0].find_element(By.XPATH, "ancestor::li[contains(@class, 'character')]")
    entry.find_element(By.CSS_SELECTOR, f"button[aria-label='Remove reference 1 of {label}']").click()
    _wait_job_done(browser, stack, _queued_job(browser, entry.find_element(By.CSS_SELECTOR, ".form-answer")))
    until(
        browser,
        lambda d: any(
            "4 reference(s)" in e.text
            for e in d.find_elements(By.CSS_SELECTOR, f"li.character[data-name='{NATSU.name}']")
        ),
        30,
        "4 references left",
        stack,
    )


def test_anime_search_details_recommendations_and_favourites(stack, browser):
    open_page(browser, stack, "anime")
    use_token(browser, USER_TOKEN)
    genre = until(
        browser,
        lambda d: (
            (s := d.find_element(By.CSS_SELECTOR, ".search-form select")).find_elements(
                By.TAG_NAME, "option"
            )[1:]
            and s
        ),
        60,
        "the genres",
        stack,
    )
    from selenium.webdriver.support.ui import Select

    Select(genre).select_by_visible_text("Sci-Fi")
    browser.find_element(By.CSS_SELECTOR, ".search-form input[name=q]").send_keys("Cowboy Bebop")
    browser.find_element(By.CSS_SELECTOR, ".search-form button[type=submit]").click()
    hits = until(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".anime-hits .anime-item"), 60, "hits", stack
    )
    assert "Cowboy Bebop" in hits[0].find_element(By.CSS_SELECTOR, ".anime-title").text
    assert "Sci-Fi" in hits[0].text
    hits[0].find_element(By.XPATH, ".//button[text()='Details']").click()
    details = until(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, ".anime-details .details-title"),
        60,
        "details",
        stack,
    )
    assert details[0].text == "Cowboy Bebop"
    recs = until(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".recommendation"), 60, "recommendations", stack
    )
    assert recs and all(r.find_elements(By.CSS_SELECTOR, ".reason") for r in recs)
    titles = [r.find_element(By.CSS_SELECTOR, ".anime-title").text for r in recs]
    assert not any(t.startswith("Cowboy Bebop (") for t in titles), titles  # never the anime itself

    toggle = browser.find_element(By.CSS_SELECTOR, ".anime-details .fav-toggle")
    assert toggle.get_attribute("aria-pressed") == "false"
    toggle.click()
    until(browser, lambda d: toggle.get_attribute("aria-pressed") == "true", 60, "the favourite", stack)
    favourites = browser.find_elements(By.CSS_SELECTOR, ".favourites .anime-title")
    assert [f.text for f in favourites] == ["Cowboy Bebop"]
    screenshot(browser, "anime")
    # kept for this browser: a reload lists it again
    browser.refresh()
    until(
        browser,
        lambda d: (
            [f.text for f in d.find_elements(By.CSS_SELECTOR, ".favourites .anime-title")] == ["Cowboy Bebop"]
        ),
        60,
        "kept",
    )
    browser.find_element(By.CSS_SELECTOR, ".favourites .fav-toggle").click()
    until(browser, lambda d: "None yet" in d.find_element(By.CSS_SELECTOR, ".favourites").text, 60, "removed")


# a picture made in the page (a canvas), handed over as a drop on the drop zone, or as a paste
HAND_OVER = """
const [how, done] = [arguments[0], arguments[arguments.length - 1]];
const canvas = document.createElement('canvas');
canvas.width = 96; canvas.height = 64;
const g = canvas.getContext('2d');
g.fillStyle = how === 'drop' ? '#3a6' : '#a36'; g.fillRect(0, 0, 96, 64);
canvas.toBlob((blob) => {
  const data = new DataTransfer();
  data.items.add(new File([blob], how + '.png', {type: 'image/png'}));
  if (how === 'drop') {
    document.querySelector('.analyse .drop-zone').dispatchEvent(
      new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
  } else {
    document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
  }
  done(true);
}, 'image/png');
"""


def test_a_picture_can_be_dropped_or_pasted(stack, browser):
    open_page(browser, stack, "anime")
    open_page(browser, stack, "analyse")  # a fresh page: no cards
    use_token(browser, USER_TOKEN)
    for how in ("drop", "paste"):
        assert browser.execute_async_script(HAND_OVER, how)
    cards = until(
        browser,
        lambda d: len(c := result_cards(d)) == 2 and all("done" in x.get_attribute("class") for x in c) and c,
        ANALYSIS_S,
        "the dropped and the pasted picture",
        stack,
    )
    assert sorted(c.find_element(By.CSS_SELECTOR, ".card-title").text for c in cards) == [
        "drop.png",
        "paste.png",
    ]


def test_the_analyse_page_fits_a_phone_screen(stack, browser):
    picture = save_png(
        stack.pictures / "phone.png", render_scene(8_800_003, characters=["yuki"], size=(640, 448)).image
    )
    try:
        # a phone's viewport (a headless window cannot be made narrower than 500 px)
        browser.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": PHONE_WIDTH, "height": 812, "deviceScaleFactor": 1, "mobile": True},
        )
        open_page(browser, stack, "analyse")
        use_token(browser, USER_TOKEN)
        [card] = analyse(browser, stack, picture)
        viewport = browser.execute_script("return document.documentElement.clientWidth")
        assert viewport == PHONE_WIDTH
        overflow = browser.execute_script("return document.documentElement.scrollWidth")
        assert overflow <= viewport, f"the page is {overflow} px wide on a {viewport} px screen"
        image = card.find_element(By.CSS_SELECTOR, "img.boxed-picture")
        assert image.size["width"] <= viewport
        # the head boxes follow the scaled picture
        box = card.find_element(By.CSS_SELECTOR, ".head-box")
        assert image.location["x"] <= box.location["x"] <= image.location["x"] + image.size["width"]
        screenshot(browser, f"analyse-{PHONE_WIDTH}px")
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
