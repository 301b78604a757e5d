"""The console's server as started by `python -m console`, on a loopback port, without a
browser: its cookie's attributes and its CSRF checks, behind a proxy (`CONSOLE_PUBLIC_URL`)
and not. No service answers here: the checks under test come before any call.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie

import aiohttp
import pytest

from console.server import RunningConsole, start_console
from console.session import COOKIE_NAME
from console.settings import ConsoleSettings

PUBLIC = "https://console.example"


async def _started(**settings: object) -> AsyncIterator[RunningConsole]:
    running = await start_console(
        ConsoleSettings(
            http_addr="127.0.0.1:0",
            subscriptions_addr="127.0.0.1:1",
            dispatcher_addr="127.0.0.1:1",
            call_timeout_seconds=0.5,
            **settings,  # type: ignore[arg-type]
        )
    )
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def direct() -> AsyncIterator[RunningConsole]:
    async for running in _started():
        yield running


@pytest.fixture
async def proxied() -> AsyncIterator[RunningConsole]:
    async for running in _started(public_url=PUBLIC):
        yield running


async def _sign_in_form(client: aiohttp.ClientSession, port: int) -> tuple[SimpleCookie, str]:
    """The session cookie the sign-in form sets, and the form's CSRF token."""
    async with client.get(f"http://127.0.0.1:{port}/sign-in") as response:
        assert response.status == 200
        cookie = SimpleCookie(response.headers["Set-Cookie"])
        page = await response.text()
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None, page
    return cookie, found.group(1)


async def _post_sign_in(
    client: aiohttp.ClientSession, port: int, cookie: SimpleCookie, csrf: str, origin: str
) -> tuple[int, str]:
    async with client.post(
        f"http://127.0.0.1:{port}/sign-in",
        data={"csrf_token": csrf, "token": ""},
        headers={"Origin": origin, "Cookie": f"{COOKIE_NAME}={cookie[COOKIE_NAME].value}"},
        allow_redirects=False,
    ) as response:
        return response.status, await response.text()


async def test_the_cookie_is_http_only_and_strict_and_not_secure_over_plain_http(
    direct: RunningConsole,
) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        cookie, _ = await _sign_in_form(client, direct.port)
    morsel = cookie[COOKIE_NAME]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert not morsel["secure"]


async def test_forms_must_come_from_the_origin_requests_arrive_on(direct: RunningConsole) -> None:
    own = f"http://127.0.0.1:{direct.port}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        cookie, csrf = await _sign_in_form(client, direct.port)
        refused = await _post_sign_in(client, direct.port, cookie, csrf, "http://evil.example")
        forged = await _post_sign_in(client, direct.port, cookie, "forged", own)
        accepted = await _post_sign_in(client, direct.port, cookie, csrf, own)
    assert refused[0] == 403
    assert "Cross-origin" in refused[1]
    assert forged[0] == 403
    assert "wrong CSRF token" in forged[1]
    # Past both checks, the form itself answers: no token was entered.
    assert accepted[0] == 401
    assert "Enter a token." in accepted[1]


async def test_behind_a_proxy_forms_must_come_from_the_public_origin_and_the_cookie_is_secure(
    proxied: RunningConsole,
) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        cookie, csrf = await _sign_in_form(client, proxied.port)
        internal = await _post_sign_in(
            client, proxied.port, cookie, csrf, f"http://127.0.0.1:{proxied.port}"
        )
        public = await _post_sign_in(client, proxied.port, cookie, csrf, PUBLIC)
    assert cookie[COOKIE_NAME]["secure"] is True
    assert internal[0] == 403
    assert "Cross-origin" in internal[1]
    assert public[0] == 401
    assert "Enter a token." in public[1]
