"""The dashboard in a real headless browser (Debian's chromium through Selenium).

The real coordinator app runs under uvicorn on a free port with SQLite in a
temporary directory; orders are created through the REST API and finished
through the coordinator's own result consumer. The browser loads /dashboard,
must show the orders, concentrators and work orders, open an order's timeline
on a click, and pick up a new order on its own refresh.

Skipped only when chromium (or Selenium) is missing and ``CI`` is unset; in CI a
missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ops.live import (
    ADMIN,
    METERS_CSV,
    OPERATOR,
    LiveServer,
    dispatch_all,
    make_app,
    make_settings,
    release_held,
    report_result,
    report_status,
    serve,
)

CHROMIUM = os.environ.get("RCD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("RCD_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1300",
)
WAIT_S = 15


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() and os.access(path, os.X_OK)):
            return f"{path} is missing (apt-get install -y chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    problem = _missing()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the browser test cannot run: {problem}")
        pytest.skip(f"dashboard browser test skipped: {problem}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="rcd-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _api(live: LiveServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=f"{live.url}/api/v1", headers={"Authorization": f"Bearer {token}"})


def _create(client: httpx.Client, meter: str, action: str, reason: str) -> dict[str, Any]:
    body = {"meter_id": meter, "action": action, "reason": reason, "special": True}
    response = client.post("/orders", json=body)
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    if answer["item"]["accepted"]:
        release_held(str(client.base_url).rstrip("/"), answer["item"]["order_id"])
    return answer


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    """A coordinator with meters, two concentrators and orders in every kind of state."""
    app = make_app(make_settings(tmp_path_factory.mktemp("dash-central")))
    with serve(app) as live:
        with _api(live, ADMIN) as admin:
            admin.post(
                "/meters/import", content=METERS_CSV.encode(), headers={"Content-Type": "text/csv"}
            ).raise_for_status()
        report_status(app, "conc-north", online=True, queue_depth=4)
        report_status(app, "conc-south", online=False, queue_depth=0)
        ids: dict[str, str] = {}
        with _api(live, OPERATOR) as op:
            ids["done"] = _create(op, "MTR-001", "disconnect", "non_payment")["item"]["order_id"]
            ids["failed"] = _create(op, "MTR-002", "disconnect", "losses")["item"]["order_id"]
            ids["armed"] = _create(op, "MTR-004", "connect", "payment_restored")["item"]["order_id"]
            ids["rejected"] = _create(op, "MTR-005", "disconnect", "non_payment")["item"][
                "order_id"
            ]
            dispatch_all(app)
            ids["running"] = _create(op, "MTR-003", "connect", "payment_restored")["item"][
                "order_id"
            ]
        dispatch_all(app)
        report_result(app, ids["done"], "MTR-001", "conc-north", "disconnected")
        report_result(
            app,
            ids["failed"],
            "MTR-002",
            "conc-north",
            "failed",
            reason="meter_not_responding",
            detail="no answer after 3 attempts",
            attempts=3,
        )
        report_result(app, ids["armed"], "MTR-004", "conc-south", "armed")
        yield live, ids


def _wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    # The dashboard re-renders its panels on each refresh: an element found a moment ago
    # may be replaced before its text is read; the condition is simply asked again.
    retry_on = (NoSuchElementException, StaleElementReferenceException)
    try:
        return WebDriverWait(
            driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=retry_on
        ).until(condition)
    except TimeoutException:
        body = driver.find_element("tag name", "body").text[:2000]
        pytest.fail(f"timed out waiting for {what}; page text:\n{body}")


def _row(driver: Any, order_id: str) -> Any:
    rows = driver.find_elements("css selector", f'#orders tbody tr[data-order-id="{order_id}"]')
    return rows[0] if rows else None


def test_dashboard_shows_orders_and_opens_a_timeline(
    browser: Any, fleet: tuple[LiveServer, dict[str, str]], tmp_path: Path
) -> None:
    live, ids = fleet
    browser.get(f"{live.url}/dashboard")
    for order_id in ids.values():
        _wait(browser, lambda d, i=order_id: _row(d, i), f"order {order_id} in the table")

    def row_text(key: str) -> str:
        return str(_row(browser, ids[key]).text)

    assert "MTR-001" in row_text("done") and "disconnected" in row_text("done")
    assert "failed" in row_text("failed") and "meter_not_responding" in row_text("failed")
    assert "armed" in row_text("armed")
    assert "rejected" in row_text("rejected") and "protected" in row_text("rejected")
    assert "dispatched" in row_text("running")

    # tiles, concentrators, work orders, charts: each panel has its own fetch, so
    # wait for each rather than assume it landed with the orders table
    _wait(browser, lambda d: d.find_element("css selector", "#tile-total .n").text == "5", "tiles")
    _wait(
        browser,
        lambda d: d.find_elements("css selector", '[data-concentrator="conc-south"]'),
        "concentrators",
    )
    north = browser.find_element("css selector", '[data-concentrator="conc-north"]')
    south = browser.find_element("css selector", '[data-concentrator="conc-south"]')
    assert "online" in north.get_attribute("class") and "queue 4" in north.text
    assert "offline" in south.get_attribute("class")
    _wait(
        browser,
        lambda d: "MTR-002" in d.find_element("css selector", "#workorders tbody").text,
        "work orders",
    )
    workorders = browser.find_element("css selector", "#workorders tbody").text
    assert "meter_not_responding" in workorders
    _wait(browser, lambda d: d.find_elements("css selector", "#svg-outcomes rect"), "outcome chart")
    _wait(
        browser, lambda d: d.find_elements("css selector", "#svg-latency circle"), "latency chart"
    )

    # a click opens the failed order's timeline through the ten steps
    _row(browser, ids["failed"]).click()
    _wait(
        browser,
        lambda d: (
            d.find_elements("css selector", "#detail-order-id")
            and d.find_element("css selector", "#detail-order-id").text == ids["failed"]
        ),
        "the timeline of the clicked order",
    )
    steps = browser.find_elements("css selector", "#timeline li")
    assert [s.get_attribute("data-step") for s in steps] == [str(n) for n in range(1, 11)]
    by_step = {s.get_attribute("data-step"): s for s in steps}
    assert "done" in by_step["1"].get_attribute("class")  # it exists: it was received
    assert "REST API" in by_step["1"].text  # made through REST here, not by a SOAP message
    assert "done" in by_step["3"].get_attribute("class")  # validated
    assert "done" in by_step["4"].get_attribute("class")  # dispatched
    assert "bad" in by_step["8"].get_attribute("class")  # failed
    # steps 5-7 from the agent's receipt and the attempts in its result, not inferred
    assert "done" in by_step["5"].get_attribute("class") and "queue depth 1" in by_step["5"].text
    assert "bad" in by_step["6"].get_attribute("class")  # the last attempt: no answer
    assert "attempt 3: meter_not_responding" in by_step["6"].text
    assert "done" in by_step["7"].get_attribute("class")  # two attempts retried
    assert "attempt 1: meter_not_responding" in by_step["7"].text
    assert "attempt 2: meter_not_responding" in by_step["7"].text
    assert "see step 8" not in by_step["6"].text
    assert "done" in by_step["10"].get_attribute("class")  # field work order
    assert "meter_not_responding" in browser.find_element("css selector", "#detail").text
    shot = Path(os.environ.get("RCD_DASHBOARD_SCREENSHOT", tmp_path / "dashboard.png"))
    browser.save_screenshot(str(shot))

    # no JavaScript errors on the way
    severe = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe


def _fits(driver: Any) -> dict[str, Any]:
    result: dict[str, Any] = driver.execute_script(
        """
        const wrap = document.querySelector('#orders-wrap');
        const head = [...document.querySelectorAll('#orders thead th')];
        return {
          page: document.documentElement.scrollWidth, view: window.innerWidth,
          wrap: wrap.scrollWidth, wrapView: wrap.clientWidth,
          headers: head.map((th) => [th.textContent, th.getBoundingClientRect().right]),
        };
        """
    )
    return result


def test_dashboard_fits_1280x800_and_an_order_link_opens_its_timeline(
    browser: Any, fleet: tuple[LiveServer, dict[str, str]]
) -> None:
    """Issue 15 items 9 and 13: no sideways scroll at 1280x800, the attempts column in
    view, state and outcome badges distinct, a URL fragment per order that opens its
    timeline, the timeline in recorded order with labels by content and the right actor."""
    live, ids = fleet
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        browser.get(f"{live.url}/dashboard")
        for order_id in ids.values():
            _wait(browser, lambda d, i=order_id: _row(d, i), f"order {order_id} in the table")
        sizes = _fits(browser)
        assert sizes["view"] == 1280
        assert sizes["page"] <= sizes["view"], sizes
        assert sizes["wrap"] <= sizes["wrapView"], sizes
        assert [h for h, _ in sizes["headers"]][-1] == "attempts"
        assert all(right <= sizes["view"] for _, right in sizes["headers"]), sizes

        failed = _row(browser, ids["failed"])
        state, outcome = failed.find_elements("css selector", ".st")[:2]
        assert "state" in state.get_attribute("class") and "bad" not in state.get_attribute("class")
        assert outcome.text == "failed" and "bad" in outcome.get_attribute("class")
        assert "3" in failed.find_elements("css selector", "td")[-1].text  # attempts, in view
        tiles = browser.find_element("css selector", "#tiles").text
        assert "refused" not in tiles and "rejected at validation" in tiles

        # a row's link is a URL fragment; opening that URL afresh shows that order
        link = failed.find_element("css selector", "a.order-link")
        assert link.get_attribute("href").endswith(f"#order={ids['failed']}")
        browser.get("about:blank")
        browser.get(f"{live.url}/dashboard#order={ids['failed'][:8]}")
        _wait(
            browser,
            lambda d: (
                d.find_elements("css selector", "#detail-order-id")
                and d.find_element("css selector", "#detail-order-id").text == ids["failed"]
            ),
            "the timeline opened by the link",
        )
        events = browser.find_elements("css selector", "#history li")
        names = [e.get_attribute("data-event") for e in events]
        assert names[:3] == ["receive", "validate", "dispatch"], names
        assert names.index("deliver") < names.index("attempt_retried") < names.index("attempt")
        assert names.index("attempt") < names.index("fail") < names.index("work_order_created")
        by_name = {e.get_attribute("data-event"): e.text for e in events}
        assert "stored by the edge agent (receipt)" in by_name["deliver"]
        assert "executed on" not in browser.find_element("css selector", "#detail").text.lower()
        assert "field work order created" in by_name["work_order_created"]
        assert "· central" in by_name["work_order_created"]
        assert "agent:" not in by_name["work_order_created"]
        steps = browser.find_element("css selector", '#timeline li[data-step="5"]').text
        assert "Stored by the edge agent" in steps
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_dashboard_refreshes_by_itself(
    browser: Any, fleet: tuple[LiveServer, dict[str, str]]
) -> None:
    live, _ids = fleet
    browser.get(f"{live.url}/dashboard")
    _wait(
        browser,
        lambda d: d.find_elements("css selector", "#orders tbody tr[data-order-id]"),
        "orders",
    )
    with _api(live, OPERATOR) as op:
        new_id = _create(op, "MTR-006", "connect", "payment_restored")["item"]["order_id"]
    _wait(browser, lambda d: _row(d, new_id), "the new order after a refresh")
    assert "commission" in _row(browser, new_id).text  # refused: not commissioned


def test_dashboard_asks_for_a_token_when_none_is_injected(browser: Any, tmp_path: Path) -> None:
    token = "operator-token-0123456789"
    settings = make_settings(tmp_path, api_tokens={token: {"name": "olga", "role": "operator"}})
    with serve(make_app(settings)) as live:
        browser.get(f"{live.url}/dashboard")
        field = _wait(
            browser,
            lambda d: (
                d.find_element("id", "token-input").is_displayed()
                and d.find_element("id", "token-input")
            ),
            "the token prompt",
        )
        field.send_keys("not-a-token")
        browser.find_element("css selector", "#login-form button").click()
        _wait(
            browser,
            lambda d: "401" in d.find_element("id", "login-error").text,
            "the refusal of a bad token",
        )
        field = browser.find_element("id", "token-input")
        field.clear()
        field.send_keys(token)
        browser.find_element("css selector", "#login-form button").click()
        _wait(browser, lambda d: d.find_element("id", "app").is_displayed(), "the dashboard")
        _wait(
            browser,
            lambda d: d.find_element("css selector", "#conn").text == "live",
            "live data",
        )
