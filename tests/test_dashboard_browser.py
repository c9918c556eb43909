"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium
against a real uWSGI (issue 14).

What only a browser shows: the progress bar advancing through the page's own
live refresh (no reload), the action buttons doing what they say, job data
rendered as text (a ``<script>`` in arguments, results or errors never runs,
not even after a refresh), and the sign-in form of a kit with a token.

The browser and its driver are Debian's, named by path (``/usr/bin/chromium``,
``/usr/bin/chromedriver``; ``make test`` installs them with scripts/test-deps.sh).
Selenium Manager never runs (the driver's path is given, and ``SE_OFFLINE``
is set): nothing is downloaded. A missing browser fails the tests, it does
not skip them.

``SPOOLKIT_SCREENSHOT=docs/dashboard.png`` (``make dashboard-screenshot``)
saves the jobs list with a running job's progress bar there; otherwise the
screenshot goes to the test's temporary directory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import secrets
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from .support import REPO, UwsgiServer

pytestmark = pytest.mark.e2e

T = TypeVar("T")

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Read at import: the autouse fixture clears SPOOLKIT_* before each test.
SCREENSHOT = os.environ.get("SPOOLKIT_SCREENSHOT")
STATES = ("queued", "scheduled", "running", "succeeded", "failed", "cancelled")
#: Runs if inserted as HTML, by the server (the script) or by the refresh's JS (the img).
PAYLOAD = "<script>window.__xss=1</script><img src=x onerror=window.__xss=2>"
#: Seconds per text of the example's render_audio: slow enough to watch a bar move.
RENDER_STEP = "0.7"
RENDER_TEXTS = 6


# -- the browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: the dashboard's browser tests need Debian's "
            "chromium and chromium-driver. 'make test' installs them (scripts/test-deps.sh), "
            "or: apt-get install chromium chromium-driver",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root
        "--disable-dev-shm-usage",
        "--window-size=1280,680",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    with pytest.MonkeyPatch.context() as patch:
        # The driver's path below already skips Selenium Manager; this keeps it offline
        # should anything call it anyway.
        patch.setenv("SE_OFFLINE", "true")
        driver = webdriver.Chrome(
            service=Service(executable_path=str(CHROMEDRIVER), log_output=str(log)),
            options=options,
        )
        try:
            yield driver
        finally:
            driver.quit()


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UwsgiServer]:
    """An open kit (no token); one spooler per queue, so a sleeping job holds a queue."""
    with UwsgiServer(
        tmp_path_factory.mktemp("kit"), SPOOLKIT_SPOOLERS="1", RENDER_API_DELAY=RENDER_STEP
    ) as server:
        yield server


def url(server: UwsgiServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def wait(driver: webdriver.Chrome, check: Callable[[], T], what: str, timeout: float = 15) -> T:
    """Poll ``check`` until it returns something truthy. Elements the live refresh
    replaced or has not drawn yet count as "not yet"."""
    try:
        return WebDriverWait(
            driver,
            timeout,
            poll_frequency=0.1,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        ).until(lambda _: check())
    except TimeoutException:
        body = driver.execute_script("return document.body ? document.body.innerText : ''")
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what} on {driver.current_url}:\n"
            f"{str(body)[:3000]}"
        ) from None


def mark_page(driver: webdriver.Chrome) -> None:
    """Tag this document: ``page_kept`` is true until the browser loads another one."""
    driver.execute_script("window.__marker = 1")


def page_kept(driver: webdriver.Chrome) -> bool:
    return bool(driver.execute_script("return window.__marker === 1"))


def text_of(driver: webdriver.Chrome, selector: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, selector).text).strip()


def navigation_status(driver: webdriver.Chrome) -> int:
    """The HTTP status of the document the browser shows."""
    return int(
        driver.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus")
    )


def gone(element: WebElement) -> bool:
    """Has the live refresh replaced ``element`` (in the same document)?"""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    return False


def submit(driver: webdriver.Chrome, form: WebElement) -> None:
    """Click the form's submit button and wait for the page it leads to."""
    mark_page(driver)
    form.find_element(
        By.CSS_SELECTOR, "button:not([type]), button[type=submit], input[type=submit]"
    ).click()

    def arrived() -> bool:
        try:
            return not page_kept(driver) and driver.execute_script(
                "return document.readyState === 'complete'"
            )
        except WebDriverException:  # asked while the browser was between pages
            return False

    wait(driver, arrived, "the page the form leads to")


def open_job(driver: webdriver.Chrome, kit: UwsgiServer, job_id: str) -> None:
    driver.get(url(kit, f"/dashboard/jobs/{job_id}"))
    wait(driver, lambda: text_of(driver, "#job-state"), f"job {job_id}'s page")


def shown_state(driver: webdriver.Chrome) -> str:
    return text_of(driver, "#job-state")


def xss_ran(driver: webdriver.Chrome) -> Any:
    return driver.execute_script("return window.__xss")


def save_screenshot(driver: webdriver.Chrome, default: Path) -> Path:
    target = Path(SCREENSHOT) if SCREENSHOT else default
    if not target.is_absolute():
        target = REPO / target
    target.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(target)), f"no screenshot written to {target}"
    return target


# -- the tests ------------------------------------------------------------------------


def test_overview_counts_refresh_live(browser: webdriver.Chrome, kit: UwsgiServer) -> None:
    browser.get(url(kit, "/dashboard"))
    wait(browser, lambda: browser.find_element(By.ID, "overview"), "#overview")
    assert browser.find_element(By.ID, "open-banner").is_displayed()
    counts = {state: int(text_of(browser, f"#count-{state}")) for state in STATES}
    mark_page(browser)

    kit.wait_job(kit.enqueue("echo", "counted"))
    wait(
        browser,
        lambda: int(text_of(browser, "#count-succeeded")) > counts["succeeded"],
        "#count-succeeded to go up",
    )
    assert page_kept(browser), "the overview was reloaded, not refreshed in place"


def test_progress_bar_advances_without_reload(
    browser: webdriver.Chrome, kit: UwsgiServer, tmp_path: Path
) -> None:
    # A list with something in most states around the job we watch, for the screenshot.
    kit.wait_job(kit.enqueue("echo", {"report": "weekly"}))
    kit.wait_job(kit.enqueue("always_fails", "progress-neighbour", max_attempts=1))
    kit.enqueue("echo", "later", countdown=3600)
    render = {"text_list": [f"paragraph {n}" for n in range(1, RENDER_TEXTS + 1)]}
    watched = kit.post("/render/chapter-1", render).json()["id"]
    kit.post("/render/chapter-2", render)  # queued behind it: one spooler on "slow"

    browser.get(url(kit, "/dashboard/jobs"))
    row = f'#jobs tr[data-job-id="{watched}"]'
    wait(browser, lambda: browser.find_element(By.CSS_SELECTOR, row), f"the row of {watched}")
    mark_page(browser)

    def progress() -> tuple[str, float, float, str] | None:
        """(state, value, max, text) read from one version of the row."""
        tr = browser.find_element(By.CSS_SELECTOR, row)
        state = str(tr.find_element(By.CSS_SELECTOR, "td.state").text).strip()
        bars = tr.find_elements(By.CSS_SELECTOR, "progress.job-progress")
        if not bars:
            return None
        text = str(tr.find_element(By.CSS_SELECTOR, ".progress-text").text).strip()
        value = float(bars[0].get_attribute("value") or 0)
        return state, value, float(bars[0].get_attribute("max") or 0), text

    first = wait(
        browser,
        # Mid-way: a bar worth a screenshot, with room left to see it move.
        lambda: (p := progress()) and p[0] == "running" and 2 <= p[1] <= RENDER_TEXTS - 2 and p,
        "the render's progress bar to reach mid-way",
        timeout=20,
    )
    assert first[3].startswith(f"{first[1]:g}/{RENDER_TEXTS}"), first
    save_screenshot(browser, tmp_path / "dashboard.png")  # running, the bar part-filled
    later = wait(
        browser,
        lambda: (p := progress()) and p[1] > first[1] and p,
        f"the progress bar to move past {first[1]:g}",
    )
    assert later[2] == RENDER_TEXTS, later
    done = int(later[1])
    assert later[3].startswith(f"{done}/{RENDER_TEXTS}"), later
    assert f"rendered text {done} of {RENDER_TEXTS}" in later[3], later
    final = wait(
        browser,
        lambda: (p := progress()) and p[0] == "succeeded" and p,
        "the render to succeed",
        timeout=RENDER_TEXTS * float(RENDER_STEP) + 15,
    )
    assert final[1] == final[2] == RENDER_TEXTS, final
    assert page_kept(browser), "the jobs list was reloaded, not refreshed in place"


def test_list_filters_by_state(browser: webdriver.Chrome, kit: UwsgiServer) -> None:
    failed = kit.wait_job(kit.enqueue("always_fails", "filtered", max_attempts=1))["id"]
    succeeded = kit.wait_job(kit.enqueue("echo", "filtered"))["id"]
    browser.get(url(kit, "/dashboard/jobs?state=failed"))
    wait(browser, lambda: browser.find_element(By.CSS_SELECTOR, "table#jobs"), "table#jobs")
    rows = browser.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job-id]")
    shown = {row.get_attribute("data-job-id"): row for row in rows}
    assert failed in shown and succeeded not in shown, sorted(shown)
    assert {row.find_element(By.CSS_SELECTOR, "td.state").text for row in rows} == {"failed"}


def test_retry_a_failed_job(browser: webdriver.Chrome, kit: UwsgiServer) -> None:
    tag = f"retried-{secrets.token_hex(4)}"
    job_id = kit.enqueue("flaky", tag, 1, max_attempts=1)  # fails its first run only
    assert kit.wait_job(job_id)["state"] == "failed"
    open_job(browser, kit, job_id)
    assert shown_state(browser) == "failed"
    error = text_of(browser, "#job-error")
    assert "RuntimeError" in error and "failure 1 of 1" in error, error
    assert "Traceback" in error or "line" in error, f"no traceback shown: {error}"

    # Hold the default queue's only spooler, so the retried job is seen waiting.
    hold = f"hold-{secrets.token_hex(4)}"
    kit.enqueue("sleeper", hold, 2.0)
    wait(browser, lambda: kit.records_of(hold), "the sleeper to hold the spooler")
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form.action-retry"))
    notice = wait(browser, lambda: text_of(browser, "#notice"), "#notice after Retry")
    assert urlsplit(browser.current_url).path == f"/dashboard/jobs/{job_id}", browser.current_url
    assert shown_state(browser) in {"queued", "running"}, (shown_state(browser), notice)
    mark_page(browser)
    wait(browser, lambda: shown_state(browser) == "succeeded", "the retried job to succeed")
    assert page_kept(browser), "the job page was reloaded, not refreshed in place"
    assert kit.job(job_id)["result"] == 2


def test_cancel_and_stop(browser: webdriver.Chrome, kit: UwsgiServer) -> None:
    scheduled = kit.enqueue("echo", "never", countdown=3600)
    open_job(browser, kit, scheduled)
    assert shown_state(browser) == "scheduled"
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form.action-cancel"))
    wait(browser, lambda: text_of(browser, "#notice"), "#notice after Cancel")
    assert shown_state(browser) == "cancelled"
    assert kit.job(scheduled)["state"] == "cancelled"

    tag = f"stopped-{secrets.token_hex(4)}"
    running = kit.enqueue("stops_on_abort", tag, 30.0)
    kit.wait_job(running, states={"running"})
    open_job(browser, kit, running)
    submit(browser, browser.find_element(By.CSS_SELECTOR, "form.action-stop"))
    wait(browser, lambda: text_of(browser, "#notice"), "#notice after Stop")
    mark_page(browser)
    wait(browser, lambda: shown_state(browser) == "cancelled", "the stopped job to end")
    assert page_kept(browser)
    assert [r["event"] for r in kit.records_of(tag)] == ["start", "aborted"]


def shows(text: str, payload: str) -> bool:
    """Is ``payload`` in ``text`` as text, or in a JSON string that ``text`` holds?"""
    if payload in text:
        return True
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return payload in json.dumps(value, ensure_ascii=False).replace('\\"', '"')


def test_job_data_is_rendered_as_text(browser: webdriver.Chrome, kit: UwsgiServer) -> None:
    echoed = kit.wait_job(kit.enqueue("echo", PAYLOAD))
    assert echoed["state"] == "succeeded" and echoed["result"] == PAYLOAD
    # A KeyError's message is the missing key: the error carries the payload too.
    failed = kit.wait_job(kit.enqueue("config_value", PAYLOAD, max_attempts=1))
    assert failed["state"] == "failed", failed

    def assert_inert(where: str) -> None:
        assert xss_ran(browser) is None, f"job data ran as code on {where}"
        injected = browser.execute_script(
            "return [...document.querySelectorAll('script, img[onerror]')]"
            ".filter(e => e.outerHTML.includes('__xss')).length"
        )
        assert injected == 0, f"job data became markup on {where}"

    open_job(browser, kit, echoed["id"])
    assert shows(text_of(browser, "#job-args"), PAYLOAD), text_of(browser, "#job-args")
    assert shows(text_of(browser, "#job-result"), PAYLOAD), text_of(browser, "#job-result")
    assert_inert("the echo job's page")

    open_job(browser, kit, failed["id"])
    error = text_of(browser, "#job-error")
    assert "KeyError" in error and PAYLOAD in error, error
    assert shows(text_of(browser, "#job-args"), PAYLOAD), text_of(browser, "#job-args")
    assert_inert("the failed job's page")

    # The list, before and after its script replaced the table with fetched HTML.
    browser.get(url(kit, "/dashboard/jobs"))
    table = wait(browser, lambda: browser.find_element(By.ID, "jobs"), "table#jobs")
    assert_inert("the jobs list")
    wait(browser, lambda: gone(table), "the jobs list's live refresh")
    wait(browser, lambda: browser.find_element(By.ID, "jobs"), "the refreshed table#jobs")
    assert_inert("the refreshed jobs list")


def cookie_texts(driver: webdriver.Chrome) -> list[str]:
    """Each cookie's value, and what its dot-separated parts decode to (a Flask
    session cookie is base64 JSON, zlib-compressed when it starts with a dot)."""
    texts = []
    for cookie in driver.get_cookies():
        value = str(cookie["value"])
        texts.append(value)
        for part in value.split("."):
            with contextlib.suppress(binascii.Error, ValueError):
                raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
                with contextlib.suppress(zlib.error):
                    raw = zlib.decompress(raw)
                texts.append(raw.decode("utf-8", "replace"))
    return texts


def test_sign_in_with_the_token(browser: webdriver.Chrome, tmp_path: Path) -> None:
    token = f"dashboard-{secrets.token_urlsafe(12)}"
    browser.delete_all_cookies()  # cookies ignore ports: the open kit's are 127.0.0.1's too
    with UwsgiServer(
        tmp_path / "locked", SPOOLKIT_API_TOKEN=token, FLASK_SECRET_KEY=secrets.token_hex(32)
    ) as locked:
        try:

            def sign_in_form() -> WebElement:
                return browser.find_element(By.XPATH, "//form[.//input[@name='token']]")

            browser.get(url(locked, "/dashboard/jobs?state=failed"))
            wait(browser, sign_in_form, "the sign-in form")
            where = urlsplit(browser.current_url)
            assert where.path == "/dashboard/sign-in", browser.current_url
            assert parse_qs(where.query)["next"][0].endswith("/dashboard/jobs?state=failed")
            assert not browser.find_elements(By.CSS_SELECTOR, "table#jobs")

            form = sign_in_form()
            form.find_element(By.NAME, "token").send_keys("not-the-token")
            submit(browser, form)
            notice = wait(browser, lambda: text_of(browser, "#notice"), "#notice of a wrong token")
            assert navigation_status(browser) == 401, notice
            assert urlsplit(browser.current_url).path == "/dashboard/sign-in"

            form = sign_in_form()
            form.find_element(By.NAME, "token").send_keys(token)
            submit(browser, form)
            wait(browser, lambda: browser.find_element(By.CSS_SELECTOR, "table#jobs"), "the list")
            where = urlsplit(browser.current_url)
            assert (where.path, where.query) == ("/dashboard/jobs", "state=failed")
            assert not browser.find_elements(By.ID, "open-banner")
            assert browser.get_cookies(), "signed in without a cookie"
            assert not any(token in text for text in cookie_texts(browser)), (
                "the token is readable in a cookie"
            )
            browser.get(url(locked, "/dashboard"))
            wait(browser, lambda: browser.find_element(By.ID, "overview"), "#overview signed in")

            # ``next`` only leads back into the dashboard, never to another site.
            browser.delete_all_cookies()
            browser.get(url(locked, "/dashboard/sign-in?next=//example.invalid/x"))
            form = wait(browser, sign_in_form, "the sign-in form")
            form.find_element(By.NAME, "token").send_keys(token)
            submit(browser, form)
            wait(browser, lambda: urlsplit(browser.current_url).path != "/dashboard/sign-in",
                 "the page after sign-in")  # fmt: skip
            assert urlsplit(browser.current_url).hostname == "127.0.0.1", browser.current_url
        finally:
            browser.delete_all_cookies()
