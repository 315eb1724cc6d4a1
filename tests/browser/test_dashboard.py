"""The dashboard in headless Chromium against a real `jobpub web` process and PostgreSQL."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By

from testbed.waiting import wait_until
from tests.browser.chrome import chrome, web_process
from tests.conftest import fresh_database

TOKEN = "browser-test-token-0123456789"  # noqa: S105 - this test's own server


# One database and one server for the module (starting them is most of the time): each
# test seeds rows of its own and compares the page with SQL, not with fixed numbers.
@pytest.fixture(scope="module")
def module_db_url(template_database: str) -> Iterator[str]:
    with fresh_database("jobpub_browser", template_database) as url:
        yield url


@pytest.fixture
def sql(module_db_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(module_db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def web(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("web") / "web.log"
    with web_process(module_db_url, log, web_token=TOKEN) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with chrome() as driver:
        yield driver


def scalar(sql: psycopg.Connection[tuple[Any, ...]], statement: str) -> Any:
    row = sql.execute(statement).fetchone()
    assert row is not None
    return row[0]


def seed(sql: psycopg.Connection[tuple[Any, ...]]) -> dict[str, int]:
    """Two future jobs, three due, one dead, one published."""
    future = scalar(
        sql,
        "INSERT INTO jobs (topic, payload, fire_at) SELECT 'home/lamp/' || i, '{\"on\": true}',"
        " now() + make_interval(mins => i) FROM generate_series(1, 2) i RETURNING id",
    )
    sql.execute(
        "INSERT INTO jobs (topic, payload, fire_at) SELECT 'home/due/' || i, 'late',"
        " now() - make_interval(mins => i) FROM generate_series(1, 3) i"
    )
    dead = scalar(
        sql,
        "INSERT INTO jobs (topic, payload, fire_at, attempts, last_error, failed_at)"
        " VALUES ('home/broken', 'x', now() - interval '5 minutes', 25,"
        " 'broker refused: not authorized', now()) RETURNING id",
    )
    sql.execute(
        "INSERT INTO jobs (topic, payload, fire_at, processed, processed_at)"
        " VALUES ('home/done', 'x', now() - interval '3 minutes', true,"
        "         now() - interval '2 minutes')"
    )
    return {"dead": dead, "future": future}


def text(browser: webdriver.Chrome, element_id: str) -> str:
    """The element's text, once the page that has it has loaded (a click returns before),
    read again if a live update replaced the element while it was being read."""
    seen: list[str] = []

    def read() -> bool:
        try:
            seen.append(str(browser.find_element(By.ID, element_id).text))
        except (NoSuchElementException, StaleElementReferenceException):
            return False
        return True

    wait_until(read, 10, f"#{element_id}")
    return seen[-1]


def log_in(browser: webdriver.Chrome, web: str) -> None:
    browser.delete_all_cookies()
    browser.get(web + "/")
    assert browser.current_url == web + "/login"  # no session: sent to the login page
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    wait_until(lambda: browser.current_url == web + "/", 10, "the overview after login")


def test_log_in_and_the_overview_agrees_with_sql(
    browser: webdriver.Chrome, web: str, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    seed(sql)
    browser.get(web + "/login")
    browser.find_element(By.ID, "token").send_keys("wrong-token")
    browser.find_element(By.ID, "login").click()
    assert "not accepted" in text(browser, "login-error")

    log_in(browser, web)
    cookie = browser.get_cookie("jobpub_session")
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"

    due = scalar(sql, "SELECT count(*) FROM jobs WHERE NOT processed AND failed_at IS NULL"
                      " AND fire_at <= now()")  # fmt: skip
    dead = scalar(sql, "SELECT count(*) FROM jobs WHERE failed_at IS NOT NULL")
    pending = scalar(sql, "SELECT count(*) FROM jobs WHERE NOT processed AND failed_at IS NULL")
    assert due >= 3
    assert text(browser, "due-backlog") == str(due)
    assert text(browser, "dead") == str(dead)
    assert text(browser, "pending") == str(pending)
    oldest = scalar(
        sql,
        "SELECT extract(epoch FROM now() - min(fire_at)) FROM jobs"
        " WHERE NOT processed AND failed_at IS NULL AND fire_at <= now()",
    )
    assert text(browser, "oldest-due") == f"{float(oldest) / 60:.0f} min"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#overview svg.spark")) == 4

    # Live: a job gone dead appears without a reload.
    sql.execute(
        "INSERT INTO jobs (topic, payload, failed_at, last_error) VALUES ('home/x', '', now(), 'e')"
    )
    wait_until(lambda: text(browser, "dead") == str(dead + 1), 15, "the overview to refresh")


def test_cancel_a_pending_job(
    browser: webdriver.Chrome, web: str, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    job = seed(sql)["future"]
    log_in(browser, web)
    browser.get(f"{web}/jobs?state=pending")
    browser.find_element(By.LINK_TEXT, str(job)).click()
    assert text(browser, "job-state") == "pending"
    assert text(browser, "job-payload") == '{"on": true}'
    browser.find_element(By.ID, "cancel").click()
    wait_until(lambda: "/jobs?" in browser.current_url, 10, "the jobs list after cancelling")
    assert f"job {job} cancelled" in text(browser, "notice")
    assert scalar(sql, f"SELECT count(*) FROM jobs WHERE id = {job}") == 0
    assert not browser.find_elements(By.ID, f"job-{job}")


def test_a_job_page_shows_its_mqtt5_properties_and_binary_payload(
    browser: webdriver.Chrome, web: str, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    job = scalar(
        sql,
        "INSERT INTO jobs (topic, payload_bytes, fire_at, dedupe_key, content_type,"
        " user_properties, expires_at) VALUES ('dev/9/fw', '\\x0a0bff'::bytea,"
        " now() + interval '1 hour', 'fw-9-' || gen_random_uuid(), 'application/octet-stream',"
        " '{\"site\": \"north\"}', now() + interval '2 hours') RETURNING id",
    )
    key = scalar(sql, f"SELECT dedupe_key FROM jobs WHERE id = {job}")
    log_in(browser, web)
    browser.get(f"{web}/jobs/{job}")
    assert text(browser, "job-payload") == "0a 0b ff"
    assert text(browser, "job-dedupe-key") == key
    assert text(browser, "job-content-type") == "application/octet-stream"
    assert "site = north" in text(browser, "job-properties")


def test_requeue_a_dead_job(
    browser: webdriver.Chrome, web: str, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    job = seed(sql)["dead"]
    log_in(browser, web)
    browser.get(web + "/dead")
    browser.find_element(By.LINK_TEXT, str(job)).click()
    assert text(browser, "job-last-error") == "broker refused: not authorized"
    assert text(browser, "job-attempts") == "25"
    browser.find_element(By.ID, "requeue").click()
    wait_until(lambda: "notice=requeued" in browser.current_url, 10, "the job after requeueing")
    assert text(browser, "job-state") == "pending"
    row = sql.execute(f"SELECT failed_at, attempts FROM jobs WHERE id = {job}").fetchone()
    assert row == (None, 0)


def test_pause_and_resume_a_filter(
    browser: webdriver.Chrome, web: str, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    topic_filter = "home/+/valve/#"
    sql.execute("DELETE FROM pauses WHERE filter = %s", (topic_filter,))
    log_in(browser, web)
    browser.find_element(By.LINK_TEXT, "Pauses").click()
    wait_until(lambda: browser.current_url == web + "/pauses", 10, "the pauses page")
    browser.find_element(By.ID, "pause-filter").send_keys(topic_filter)
    browser.find_element(By.ID, "pause-reason").send_keys("valve maintenance")
    browser.find_element(By.ID, "pause").click()
    wait_until(lambda: "notice=" in browser.current_url, 10, "the pauses page after pausing")
    assert text(browser, "notice") == f"{topic_filter} paused"
    row = sql.execute("SELECT reason FROM pauses WHERE filter = %s", (topic_filter,)).fetchone()
    assert row == ("valve maintenance",)
    listed = browser.find_element(By.CSS_SELECTOR, f'tr.pause[data-filter="{topic_filter}"]')
    assert "valve maintenance" in listed.text

    # A filter the table refuses comes back with the rule, and nothing is paused.
    browser.find_element(By.ID, "pause-filter").send_keys("home/#/valve")
    browser.find_element(By.ID, "pause").click()
    wait_until(lambda: "home%2F%23%2Fvalve" in browser.current_url, 10, "the refusal")
    assert "is not an MQTT topic filter" in text(browser, "notice")
    assert scalar(sql, "SELECT count(*) FROM pauses WHERE filter = 'home/#/valve'") == 0

    browser.find_element(
        By.CSS_SELECTOR, f'tr.pause[data-filter="{topic_filter}"] button.resume'
    ).click()
    wait_until(lambda: "resumed" in browser.current_url, 10, "the pauses page after resuming")
    assert text(browser, "notice") == f"{topic_filter} resumed"
    assert scalar(sql, "SELECT count(*) FROM pauses WHERE filter = 'home/+/valve/#'") == 0
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr.pause[data-filter="{topic_filter}"]')


def test_the_overview_lists_replicas_with_their_heartbeat_age(
    browser: webdriver.Chrome, web: str, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    replica = "00000000-0000-0000-0000-00000000b0b0"
    sql.execute(
        "INSERT INTO jobpub_replicas (id, host, version, partition, heartbeat_at)"
        " VALUES (%s, 'browser-host', '9.9.9', '1/3', now() - interval '3 minutes')"
        " ON CONFLICT (id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at",
        (replica,),
    )
    log_in(browser, web)
    row = text(browser, f"replica-{replica}")
    assert "browser-host" in row
    assert "1/3" in row
    assert "3 min ago, stale" in row  # older than JOBPUB_REPLICA_STALE_AFTER
    live = scalar(sql, "SELECT count(*) FROM jobpub_replicas"
                       " WHERE heartbeat_at >= now() - interval '15 seconds'")  # fmt: skip
    assert text(browser, "replicas-live") == str(live)


def test_an_action_without_the_csrf_token_is_refused(
    browser: webdriver.Chrome, web: str, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    job = seed(sql)["future"]
    log_in(browser, web)
    session = browser.get_cookie("jobpub_session")
    assert session is not None
    # The session's cookie, but not its CSRF token.
    forged = urllib.request.Request(  # noqa: S310 - http:// of our own server
        f"{web}/jobs/{job}/cancel",
        data=urllib.parse.urlencode({"csrf": "guess"}).encode(),
        headers={"Cookie": f"jobpub_session={session['value']}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=10)  # noqa: S310 - our own server
    assert refused.value.code == 403
    refused.value.close()
    assert scalar(sql, f"SELECT count(*) FROM jobs WHERE id = {job}") == 1

    forged_pause = urllib.request.Request(  # noqa: S310 - http:// of our own server
        f"{web}/pauses",
        data=urllib.parse.urlencode({"csrf": "guess", "filter": "forged/#"}).encode(),
        headers={"Cookie": f"jobpub_session={session['value']}"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged_pause, timeout=10)  # noqa: S310 - our own server
    assert refused.value.code == 403
    refused.value.close()
    assert scalar(sql, "SELECT count(*) FROM pauses WHERE filter = 'forged/#'") == 0


def test_pages_fit_a_phone_screen(
    browser: webdriver.Chrome, web: str, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    job = seed(sql)["dead"]
    sql.execute(
        "INSERT INTO pauses (filter, reason) VALUES ('buildings/+/floors/+/rooms/+/thermostats/#',"
        " 'a long filter and a long reason: heating contractor on site all week') "
        "ON CONFLICT DO NOTHING"
    )
    log_in(browser, web)
    size = browser.get_window_size()
    browser.set_window_size(390, 844)
    try:
        for path in ("/", "/jobs", "/schedules", "/dead", "/pauses", f"/jobs/{job}"):
            browser.get(web + path)
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, f"{path} is {overflow}px wider than the screen"
    finally:
        browser.set_window_size(size["width"], size["height"])
