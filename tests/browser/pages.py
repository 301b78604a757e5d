"""Driving the console in Chromium: finding and launching it, signing in, waiting, screenshots.

Every wait here is bounded: Playwright's own waits by the contexts' default timeouts, and
the reload loops by a number of rounds and a time.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from playwright.sync_api import BrowserContext, Page, ViewportSize, expect

from tests.browser.harness import ROOT

__all__ = [
    "CHROMIUM_ARGS",
    "WAIT_MS",
    "NewContext",
    "SignedIn",
    "artifacts_dir",
    "find_chromium",
    "opened",
    "reload_until",
    "screenshot",
    "sign_in",
]

# The machine has no network but loopback: without these Chromium keeps trying to reach
# Google's services and floods the log with refused connections.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Milliseconds any one Playwright action or assertion may wait.
WAIT_MS = 5_000


class NewContext(Protocol):
    """Opens a fresh browser context (its own cookies) on the console."""

    def __call__(self, *, viewport: ViewportSize | None = None) -> BrowserContext: ...


class SignedIn(Protocol):
    """Signs in with `token` in a fresh context; the page after the sign-in."""

    def __call__(self, token: str, *, viewport: ViewportSize | None = None) -> Page: ...


def find_chromium() -> str | None:
    """The Chromium on PATH (Debian's `chromium`, or Ubuntu's `chromium-browser`)."""
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return None


def artifacts_dir() -> Path:
    """Where screenshots go: `$TEST_ARTIFACTS_DIR/console`, else var/test-artifacts/console."""
    base = os.environ.get("TEST_ARTIFACTS_DIR")
    root = Path(base) if base else ROOT / "var" / "test-artifacts"
    directory = root / "console"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def screenshot(page: Page, name: str) -> Path:
    """Saves the whole page as `<name>.png` in the artifacts directory."""
    path = artifacts_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True, timeout=WAIT_MS)
    return path


def opened(page: Page, path: str) -> Page:
    """`page`, on `path`, which must have answered 200."""
    answer = page.goto(path)
    assert answer is not None, path
    assert answer.status == 200, f"GET {path}: {answer.status}"
    return page


def sign_in(context: BrowserContext, token: str) -> Page:
    """Signs in through the form with `token`; the page, on the console's home page."""
    page = opened(context.new_page(), "/sign-in")
    page.get_by_label("Token", exact=True).fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).not_to_have_url(re.compile(r"/sign-in"))
    return page


def reload_until(
    page: Page, check: Callable[[], bool], *, what: str, within: float = 15.0, every: float = 0.3
) -> None:
    """Reloads `page` until `check()` is true: at most `within` seconds and as many rounds
    as fit in it."""
    deadline = time.monotonic() + within
    for _ in range(int(within / every) + 1):
        if check():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(every)
        page.reload()
    assert check(), f"{page.url}: {what}, not within {within} s"
