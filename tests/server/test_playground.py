"""The playground at GET /, in headless Chromium (Debian's package, driven by Playwright) against the
real server: a streamed RAIN answer and the search behind each committed set appear, and match what the
API itself answers; errors read as text, never as markup; under an API key the page asks for the key,
keeps it for the tab and sends it."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from serve_helpers import API_KEY

CHROMIUM = Path("/usr/bin/chromium")
# Headless and quiet: the browser contacts nothing but the server under test.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ANSWER_MS = 300_000  # a tiny search takes seconds, minutes on a loaded CPU; this only bounds a hang
TINY = {"max-iters": "2", "min-iters": "2", "max-tokens": "8", "seed": "0"}
KEY_ITEM = "rain-serve-api-key"
BAR_COLUMNS = ("iterations", "tree_size", "visits", "value")


@dataclass
class Tab:
    page: object  # playwright.sync_api.Page
    requests: list = field(default_factory=list)  # the page's chat-completion requests, in order
    problems: list[str] = field(default_factory=list)  # console errors and uncaught exceptions

    def unexpected_problems(self) -> list[str]:
        """Problems besides the console lines Chromium writes for every HTTP error a fetch receives."""
        return [p for p in self.problems if not p.startswith("Failed to load resource")]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():  # a failure, not a skip: CI (root with apt) must run this
        pytest.fail(f"{CHROMIUM} is missing; scripts/setup.sh installs Debian's chromium when run as root")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def tab(browser):
    context = browser.new_context()  # its own sessionStorage
    page = context.new_page()
    tab = Tab(page)
    page.on("console", lambda message: message.type == "error" and tab.problems.append(message.text))
    page.on("pageerror", lambda error: tab.problems.append(str(error)))
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and tab.requests.append(r))
    yield tab
    context.close()


def ask(page, message: str, fields: dict[str, str], vanilla: bool = False) -> None:
    page.fill("#message", message)
    page.check("#mode-vanilla" if vanilla else "#mode-rain")
    for name, value in fields.items():
        page.fill(f"#{name}", value)
    page.click("#send")


def facts(page) -> dict[str, str]:
    names = page.locator("#facts dt").all_text_contents()
    return dict(zip(names, page.locator("#facts dd").all_text_contents()))


def test_a_rain_answer_streams_with_the_search_behind_each_set(rain_server, tab):
    page = tab.page
    page.goto(rain_server.base_url + "/")
    page.select_option("#preset", "adversarial")
    ask(page, "Name three colours.", TINY)
    page.wait_for_selector("#summary:not([hidden])", timeout=ANSWER_MS)

    (request,) = tab.requests
    body = request.post_data_json
    assert body["stream"] is True and body["max_tokens"] == 8 and body["seed"] == 0
    assert body["rain"] == {"preset": "adversarial", "max_iters": 2, "min_iters": 2}

    # The same seeded request, not streamed, is the reference for what the page drew.
    expected = rain_server.client().chat.completions.create(
        model=body["model"], messages=body["messages"], max_tokens=8, seed=0, extra_body={"rain": body["rain"]})
    rain = expected.model_extra["rain"]
    assert page.text_content("#answer") == expected.choices[0].message.content
    texts = page.eval_on_selector_all(
        "#commits td.text", "cells => cells.map(c => c.classList.contains('empty') ? '' : c.textContent)")
    assert "".join(texts) == expected.choices[0].message.content
    rows = page.locator("#commits tbody tr")
    assert rows.count() == len(rain["commit_stats"]) == rain["commits"] > 1
    for index, stats in enumerate(rain["commit_stats"]):
        row = rows.nth(index)
        assert row.locator("td.tokens").text_content() == str(stats["tokens"])
        for name in BAR_COLUMNS:
            assert float(row.locator(f"td.{name}").get_attribute("data-value")) == pytest.approx(stats[name])
        assert row.locator("td.iterations .fill").evaluate("f => parseFloat(f.style.width)") > 0

    assert re.fullmatch(r"\d+\.\d× the latency of vanilla decoding", page.text_content("#headline"))
    assert page.locator("#cost .cost-row").all_text_contents()[0].startswith("RAIN latency")
    shown = facts(page)
    assert shown["iterations"] == str(rain["iterations"]) and shown["commits"] == str(rain["commits"])
    assert shown["self-evaluations"] == str(rain["self_evaluations"]) and shown["finish"] == "length"
    assert page.text_content("#status") == "finished (length)"
    assert tab.problems == []  # no script error, no refused resource, no 404


def test_compare_shows_vanilla_beside_a_gated_answer_that_marks_its_sentences(rain_server, tab):
    """"Compare" runs the message in vanilla first, then in the chosen mode, and shows both answers with their
    latencies. Gated at a threshold of 1 with no search budget flags the first sentence and refuses at once:
    the page marks that sentence refused, with its judge value."""
    page = tab.page
    page.goto(rain_server.base_url + "/")
    page.fill("#message", "Name three colours.")
    page.check("#mode-gated")
    for name, value in {**TINY, "judge-threshold": "1", "gated-budget": "0"}.items():
        page.fill(f"#{name}", value)
    page.click("#compare")
    # the chosen mode's latency is written once its stream has ended, after its summary
    expect(page.locator("#mode-latency")).to_have_text(re.compile(r"\d+\.\d\d s"), timeout=ANSWER_MS)

    plain, gated = (r.post_data_json for r in tab.requests)
    assert plain["rain"] == {"enabled": False}
    assert gated["rain"] == {"preset": "harmless", "strategy": "gated", "max_iters": 2, "min_iters": 2,
                             "judge_threshold": 1, "gated_search_budget": 0}
    client = rain_server.client()
    vanilla, expected = (client.chat.completions.create(model=b["model"], messages=b["messages"], max_tokens=8, seed=0,
                                                        extra_body={"rain": b["rain"]}) for b in (plain, gated))
    assert page.text_content("#vanilla-answer") == vanilla.choices[0].message.content
    assert page.text_content("#mode-answer") == page.text_content("#answer") == expected.choices[0].message.content
    assert page.text_content("#mode-name") == "gated"
    assert re.fullmatch(r"\d+\.\d\d s", page.text_content("#vanilla-latency"))

    rain = expected.model_extra["rain"]
    assert rain["outcome"] == "refused" and facts(page)["outcome"] == "refused"
    items = page.locator("#sentence-list li")
    assert items.count() == len(rain["sentences"]) >= 1
    assert items.last.get_attribute("class") == "refused" and items.last.locator(".mark").text_content() == "refused"
    value = rain["sentences"][-1]["value"]
    shown = str(int(value)) if float(value).is_integer() else f"{value:.2f}"  # as the page formats a number
    assert items.last.locator(".value").text_content().startswith(f"judge {shown}")
    assert page.locator("#cost .cost-row").all_text_contents()[0].startswith("gated latency")
    assert page.is_hidden("#commits") and page.is_visible("#no-search")
    assert tab.problems == []


def test_an_error_reads_as_text_never_as_markup(rain_server, tab):
    page = tab.page
    page.goto(rain_server.base_url + "/")
    hostile = '<img src=x onerror="document.title=1">'  # the server's 400 quotes the preset it refused
    page.eval_on_selector("#preset", "(select, value) => select.add(new Option(value, value, true, true))", hostile)
    ask(page, "Name three colours.", TINY)
    page.wait_for_selector("#error:not([hidden])", timeout=ANSWER_MS)

    error = page.locator("#error")
    assert error.locator("strong").text_content() == "HTTP 400"
    assert hostile in error.locator(".message").text_content()
    assert "invalid_request_error" in error.text_content() and "param: rain.preset" in error.text_content()
    assert error.locator("img").count() == 0 and page.title() == "rain-serve playground"
    assert page.is_enabled("#send") and page.text_content("#status") == "failed"
    assert tab.unexpected_problems() == []


def test_the_page_asks_for_the_api_key_and_sends_it(strict_server, tab):
    page = tab.page
    for path in ("/", "/playground/playground.js", "/playground/playground.css"):
        assert httpx.get(strict_server.base_url + path, timeout=10).status_code == 200  # open, like /health
    assert httpx.get(strict_server.base_url + "/v1/models", timeout=10).status_code == 401

    page.goto(strict_server.base_url + "/")
    ask(page, "Name three colours.", {"max-tokens": "8"}, vanilla=True)
    page.wait_for_selector("#key-form:not([hidden])", timeout=ANSWER_MS)
    assert page.get_attribute("#api-key", "type") == "password"
    page.fill("#api-key", "wrong")
    page.click("#key-form button")
    # expect() polls from Playwright's own world; wait_for_function evals in the page, which the CSP forbids
    expect(page.locator("#key-message")).to_contain_text("refused", timeout=ANSWER_MS)
    assert page.is_visible("#key-form")
    page.fill("#api-key", API_KEY)
    page.click("#key-form button")
    page.wait_for_selector("#summary:not([hidden])", timeout=ANSWER_MS)

    assert page.text_content("#answer") and page.is_hidden("#key-form")
    assert page.text_content("#headline") == "Vanilla decoding: no search, no overhead"
    assert page.is_visible("#no-search") and page.is_hidden("#commits")
    sent = [r.all_headers().get("authorization") for r in tab.requests]
    assert sent == [None, "Bearer wrong", f"Bearer {API_KEY}"]
    assert [r.post_data_json["rain"] for r in tab.requests] == [{"enabled": False}] * 3

    page.reload()  # the key stays with the tab: the next answer needs no prompt
    ask(page, "Name three colours.", {"max-tokens": "4"}, vanilla=True)
    page.wait_for_selector("#summary:not([hidden])", timeout=ANSWER_MS)
    assert page.evaluate(f"sessionStorage.getItem('{KEY_ITEM}')") == API_KEY and page.is_hidden("#key-form")
    assert tab.unexpected_problems() == []


def test_an_error_inside_the_stream_is_shown_after_the_partial_answer(strict_server, tab):
    page = tab.page
    page.goto(strict_server.base_url + "/")
    page.evaluate(f"sessionStorage.setItem('{KEY_ITEM}', '{API_KEY}')")
    ask(page, "Tell me about owls.", {"max-iters": "10000", "min-iters": "10000", "max-tokens": "64"})
    # the stream has begun: --request-timeout ends the search in-band
    page.wait_for_selector("#error:not([hidden])", timeout=ANSWER_MS)

    error = page.locator("#error")
    assert error.locator("strong").text_content() == "The answer stopped with an error"
    assert "request_timeout" in error.text_content() and "timeout_error" in error.text_content()
    assert page.is_hidden("#summary") and page.is_enabled("#send")
    assert tab.unexpected_problems() == []
