"""The event loop a service runs on is the one its settings name."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from dispatcher_service.settings import DispatcherSettings
from service_common import event_loop
from subscription_service.settings import SubscriptionSettings


async def _loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_uvloop_runs_the_service_on_libuv() -> None:
    assert event_loop.run(_loop_type(), loop="uvloop") is uvloop.Loop


def test_asyncio_runs_the_service_on_the_standard_library_loop() -> None:
    loop_type = event_loop.run(_loop_type(), loop="asyncio")
    assert loop_type is not uvloop.Loop
    assert issubclass(loop_type, asyncio.BaseEventLoop)


def test_both_services_default_to_asyncio_and_take_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert DispatcherSettings().event_loop == "asyncio"
    monkeypatch.setenv("SUBSCRIPTIONS_EVENT_LOOP", "uvloop")
    assert SubscriptionSettings().event_loop == "uvloop"


def test_an_unknown_event_loop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        DispatcherSettings()
