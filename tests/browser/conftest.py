"""The console in Chromium against real services: the browser, the platform, the receiver.

Every test here is marked `browser`. Without a Chromium that starts, the tests skip, saying
why; when `CI` is set they fail instead. The platform (both services and the console as
processes, see harness.py) and the browser are started once per module; each test opens
contexts of its own (one per operator: each has its own cookies), closed when it ends.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.browser.harness import (
    Platform,
    ThreadedReceiver,
    running_platform,
    running_receiver,
)
from tests.browser.pages import (
    CHROMIUM_ARGS,
    WAIT_MS,
    NewContext,
    SignedIn,
    artifacts_dir,
    find_chromium,
    sign_in,
)

_HERE = Path(__file__).parent
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()

expect.set_options(timeout=WAIT_MS)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks every test of this directory `browser` (before `-m` selects by marks)."""
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keeps each phase's report on the test, so its contexts can tell it failed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def unavailable(reason: str) -> NoReturn:
    """Skips, saying why; fails instead when `CI` is set (the browser is required there)."""
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests need Chromium when CI is set: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """The system's Chromium, headless, driven by Playwright (no downloaded browser)."""
    path = find_chromium()
    if path is None:
        unavailable("no chromium or chromium-browser on PATH (scripts/install_browser.sh)")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(
                executable_path=path, args=CHROMIUM_ARGS, timeout=30_000
            )
        except PlaywrightError as error:
            unavailable(f"{path} does not start: {error.message.splitlines()[0]}")
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def platform(chromium: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """Both services and the console, as processes on loopback (after the browser: no
    platform is started for tests that skip)."""
    with running_platform(tmp_path_factory.mktemp("console-platform")) as running:
        yield running


@pytest.fixture(scope="module")
def receiver() -> Iterator[ThreadedReceiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture(scope="module", autouse=True)
def _no_stale_failure_screenshots() -> None:
    """Removes failed-*.png of earlier runs: those left after this one are its own."""
    for stale in artifacts_dir().glob("failed-*.png"):
        stale.unlink()


@pytest.fixture(scope="module")
def visited_urls() -> list[str]:
    """Every URL any page of the module asked for (pages, forms, styles)."""
    return []


@pytest.fixture
def new_context(
    chromium: Browser,
    platform: Platform,
    visited_urls: list[str],
    request: pytest.FixtureRequest,
) -> Iterator[NewContext]:
    """Opens fresh browser contexts on the console (closed after the test; when it fails,
    each open page is saved as failed-<test>-<n>.png beside the screenshots)."""
    opened: list[BrowserContext] = []

    def open_context(*, viewport: ViewportSize | None = None) -> BrowserContext:
        context = chromium.new_context(base_url=platform.console_url, viewport=viewport)
        context.set_default_timeout(WAIT_MS)
        context.set_default_navigation_timeout(2 * WAIT_MS)
        context.on("request", lambda sent: visited_urls.append(sent.url))
        opened.append(context)
        return context

    yield open_context
    if any(report.failed for report in request.node.stash.get(_REPORTS, {}).values()):
        _save_failed_pages(request.node.name, opened)
    for context in opened:
        context.close()


def _save_failed_pages(test: str, contexts: list[BrowserContext]) -> None:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", test)
    pages = [page for context in contexts for page in context.pages]
    for number, page in enumerate(pages, 1):
        # A page that cannot be drawn any more is no reason for another error.
        with contextlib.suppress(PlaywrightError):
            page.screenshot(path=str(artifacts_dir() / f"failed-{name}-{number}.png"))


@pytest.fixture
def signed_in(new_context: NewContext) -> SignedIn:
    """Signs in with a token in a fresh context (its own cookie jar); the page."""

    def open_as(token: str, *, viewport: ViewportSize | None = None) -> Page:
        return sign_in(new_context(viewport=viewport), token)

    return open_as


@pytest.fixture
def admin(signed_in: SignedIn, platform: Platform) -> Page:
    """A page signed in as acme-admin (every scope of tenant acme)."""
    return signed_in(platform.tokens.acme_admin)
