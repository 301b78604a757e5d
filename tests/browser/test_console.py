"""The console end to end: an operator in Chromium, against the real services.

Sign in; create a subscription through the form; publish an event with the `webhooks` CLI;
follow its delivery (a failed attempt, the retry, a redelivery); edit, conflict, disable,
enable, delete; and what a read-only token, a forged form and another tenant are refused.
Locators are by label and role, so every control used is also reachable by assistive
technology. Screenshots of the main pages go to the artifacts directory (pages.py).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Browser, Locator, Page, ViewportSize, expect

from console.session import COOKIE_NAME
from tests.browser.harness import Platform, ThreadedReceiver, subscription_secret
from tests.browser.pages import (
    WAIT_MS,
    NewContext,
    SignedIn,
    opened,
    reload_until,
    screenshot,
    sign_in,
)

# The example event's type (examples/claim-created.json), and one never published here.
PUBLISHED_TYPE = "event.claim.created.v1"
QUIET_TYPE = "event.note.created.v1"
PHONE: ViewportSize = {"width": 375, "height": 812}
_SUBSCRIPTION_PAGE = re.compile(r"/subscriptions/([^/?#]+)$")


@dataclass(frozen=True)
class FormSubscription:
    """The subscription created through the form, to a receiver path that first fails."""

    id: str
    url: str
    path: str


@pytest.fixture(scope="module")
def form_subscription(
    chromium: Browser, platform: Platform, receiver: ThreadedReceiver, visited_urls: list[str]
) -> Iterator[FormSubscription]:
    """Creates, as acme-admin through /subscriptions/new, a subscription to the example's
    type whose receiver answers 500 once, then 200."""
    path = f"/hooks/{uuid.uuid4().hex}"
    receiver.script(path, 500, 200)
    context = chromium.new_context(base_url=platform.console_url)
    context.set_default_timeout(WAIT_MS)
    context.on("request", lambda sent: visited_urls.append(sent.url))
    try:
        page = sign_in(context, platform.tokens.acme_admin)
        subscription_id = _create_through_form(page, receiver.url(path))
        yield FormSubscription(subscription_id, receiver.url(path), path)
    finally:
        context.close()


def _create_through_form(page: Page, url: str) -> str:
    """Fills and sends the new-subscription form; the id of the subscription it shows."""
    opened(page, "/subscriptions/new")
    page.get_by_label("URL", exact=True).fill(url)
    page.get_by_label("Message types", exact=True).fill(PUBLISHED_TYPE)
    page.get_by_label("Description", exact=True).fill("browser test receiver")
    page.get_by_label("Signature algorithm", exact=True).select_option("ecdsa-p256-sha256")
    page.get_by_label("Secret", exact=True).fill(subscription_secret())
    page.get_by_label("Enabled", exact=True).check()
    page.get_by_role("button", name="Create subscription").click()
    expect(page).to_have_url(_SUBSCRIPTION_PAGE)
    match = _SUBSCRIPTION_PAGE.search(page.url)
    assert match is not None, page.url
    assert match[1] != "new", page.url
    return match[1]


@pytest.fixture(scope="module")
def published(platform: Platform, form_subscription: FormSubscription) -> str:
    """The messageId of the example event, published with the CLI as acme-admin once the
    dispatcher routes it to the form's subscription (the only one of acme for its type)."""
    deadline = time.monotonic() + 15
    for _ in range(60):
        answer = platform.cli.publish_example(platform.tokens.acme_admin, platform.directory)
        assert answer["outcome"] == "accepted", answer
        if answer["deliveries"] == 1:
            message_id: str = answer["messageId"]
            return message_id
        # The dispatcher follows the subscription service: it may not know the new one yet.
        assert time.monotonic() < deadline, "the dispatcher never routed the new subscription"
        time.sleep(0.25)
    raise AssertionError("the dispatcher never routed the new subscription")


@pytest.fixture(scope="module")
def delivery_id(platform: Platform, published: str) -> str:
    """The id of the published event's delivery, as the CLI lists it."""
    deadline = time.monotonic() + 15
    for _ in range(60):
        found = platform.cli.deliveries(platform.tokens.acme_admin, published)
        if found:
            found_id: str = found[0]["id"]
            return found_id
        assert time.monotonic() < deadline, "the event has no delivery"
        time.sleep(0.25)
    raise AssertionError("the event has no delivery")


def _status(page: Page, path: str) -> int:
    answer = page.goto(path)
    assert answer is not None, path
    return answer.status


def _attempts(page: Page) -> Locator:
    """The rows (with cells) of the table of attempts: the table with a Status column."""
    table = page.get_by_role("table").filter(has=page.get_by_role("columnheader", name="Status"))
    return table.get_by_role("row").filter(has=page.get_by_role("cell"))


def _status_cell(page: Page, status: int) -> Locator:
    return _attempts(page).get_by_role("cell", name=re.compile(rf"^\s*{status}\b"))


def test_signing_in_keeps_the_token_in_a_strict_http_only_cookie_and_out_of_urls(
    new_context: NewContext, platform: Platform
) -> None:
    context = new_context()
    requested: list[str] = []
    context.on("request", lambda sent: requested.append(sent.url))
    page = context.new_page()
    page.goto("/subscriptions")
    expect(page).to_have_url(re.compile(r"/sign-in$"))  # no session: the form first
    screenshot(page, "sign-in")

    page.get_by_label("Token", exact=True).fill(platform.tokens.acme_admin)
    page.get_by_role("button", name="Sign in").click()

    expect(page).to_have_url(re.compile(r"/subscriptions$"))
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    [cookie] = [c for c in context.cookies() if c.get("name") == COOKIE_NAME]
    assert cookie.get("httpOnly") is True
    assert cookie.get("sameSite") == "Strict"
    assert platform.tokens.acme_admin not in cookie.get("value", "")  # encrypted
    assert requested
    assert not [url for url in requested if platform.tokens.acme_admin in url]


def test_a_token_no_service_knows_is_refused_on_the_form(
    new_context: NewContext, platform: Platform
) -> None:
    page = new_context().new_page()
    opened(page, "/sign-in")
    page.get_by_label("Token", exact=True).fill("no-such-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/sign-in$"))
    expect(page.get_by_label("Token", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("main")).to_contain_text("Neither service accepts that token")
    page.goto("/subscriptions")
    expect(page).to_have_url(re.compile(r"/sign-in$"))  # still signed out


def test_a_subscription_created_through_the_form_is_shown_and_listed(
    admin: Page, form_subscription: FormSubscription
) -> None:
    opened(admin, f"/subscriptions/{form_subscription.id}")
    expect(admin.get_by_role("main")).to_contain_text(form_subscription.url)
    expect(admin.get_by_role("main")).to_contain_text(PUBLISHED_TYPE)
    screenshot(admin, "subscription")

    opened(admin, "/subscriptions")
    expect(admin.get_by_role("main")).to_contain_text(form_subscription.url)
    screenshot(admin, "subscriptions")


def test_a_failed_delivery_is_retried_then_redelivered(
    admin: Page,
    published: str,
    form_subscription: FormSubscription,
    receiver: ThreadedReceiver,
) -> None:
    opened(admin, "/deliveries")
    admin.get_by_label("Message id", exact=True).fill(published)
    admin.get_by_role("button", name="Filter").click()
    expect(admin).to_have_url(re.compile(rf"[?&]message_id={published}"))
    rows = admin.get_by_role("row").filter(has_text=published)
    reload_until(admin, lambda: rows.count() >= 1, what="no delivery listed")
    expect(rows).to_have_count(1)  # the form's subscription is acme's only one of its type
    screenshot(admin, "deliveries")

    rows.get_by_role("link").first.click()  # the delivery's id, first in its row
    expect(admin).to_have_url(re.compile(r"/deliveries/[^/?#]+$"))
    reload_until(
        admin,
        lambda: _status_cell(admin, 500).count() == 1 and _status_cell(admin, 200).count() == 1,
        what="no failed attempt (500) and retry (200)",
        within=20,
    )
    expect(_attempts(admin)).to_have_count(2)
    assert receiver.count(form_subscription.path) == 2
    screenshot(admin, "delivery")

    admin.get_by_role("button", name="Redeliver").click()
    reload_until(
        admin,
        lambda: _attempts(admin).count() == 3,
        what="the redelivery made no third attempt",
        within=20,
    )
    expect(_status_cell(admin, 200)).to_have_count(2)
    assert receiver.count(form_subscription.path) == 3


def test_an_edit_is_saved_and_a_stale_edit_overwrites_nothing(
    admin: Page, platform: Platform, receiver: ThreadedReceiver
) -> None:
    token = platform.tokens.acme_admin
    subscription_id = platform.cli.create_subscription(token, receiver.url("/edited"), QUIET_TYPE)
    opened(admin, f"/subscriptions/{subscription_id}/edit")
    admin.get_by_label("Description", exact=True).fill("edited in the browser")
    admin.get_by_role("button", name="Save").click()
    expect(admin).to_have_url(re.compile(rf"/subscriptions/{subscription_id}$"))
    expect(admin.get_by_role("main")).to_contain_text("edited in the browser")

    first = opened(admin, f"/subscriptions/{subscription_id}/edit")
    second = opened(admin.context.new_page(), f"/subscriptions/{subscription_id}/edit")
    first.get_by_label("Description", exact=True).fill("saved first")
    first.get_by_role("button", name="Save").click()
    expect(first).to_have_url(re.compile(rf"/subscriptions/{subscription_id}$"))
    second.get_by_label("Description", exact=True).fill("saved second, from a stale form")
    second.get_by_role("button", name="Save").click()

    expect(second.get_by_role("alert")).to_contain_text("changed")
    assert platform.cli.subscription(token, subscription_id)["description"] == "saved first"


def test_a_subscription_is_disabled_with_a_reason_enabled_and_deleted(
    admin: Page, platform: Platform, receiver: ThreadedReceiver
) -> None:
    token = platform.tokens.acme_admin
    subscription_id = platform.cli.create_subscription(token, receiver.url("/toggled"), QUIET_TYPE)
    opened(admin, f"/subscriptions/{subscription_id}")
    admin.get_by_label("Reason", exact=True).fill("receiver under maintenance")
    admin.get_by_role("button", name="Disable").click()
    expect(admin.get_by_role("main")).to_contain_text("receiver under maintenance")
    shown = platform.cli.subscription(token, subscription_id)
    assert shown["enabled"] is False
    assert shown["disabledReason"] == "receiver under maintenance"

    admin.get_by_role("button", name="Enable").click()
    expect(admin.get_by_role("button", name="Disable")).to_be_visible()
    assert platform.cli.subscription(token, subscription_id)["enabled"] is True

    admin.get_by_role("link", name="Delete", exact=True).click()
    expect(admin).to_have_url(re.compile(rf"/subscriptions/{subscription_id}/delete$"))
    admin.get_by_role("button", name="Delete subscription").click()
    expect(admin).to_have_url(re.compile(r"/subscriptions$"))
    assert _status(admin, f"/subscriptions/{subscription_id}") == 404


def test_a_read_only_token_is_offered_no_change(
    signed_in: SignedIn,
    platform: Platform,
    form_subscription: FormSubscription,
    published: str,
    delivery_id: str,
) -> None:
    viewer = signed_in(platform.tokens.acme_viewer)
    opened(viewer, f"/subscriptions/{form_subscription.id}")
    expect(viewer.get_by_role("main")).to_contain_text(form_subscription.url)
    expect(viewer.get_by_role("link", name="Edit", exact=True)).to_have_count(0)
    expect(viewer.get_by_role("button", name="Disable")).to_have_count(0)
    expect(viewer.get_by_role("link", name="Delete", exact=True)).to_have_count(0)
    expect(viewer.get_by_role("button", name="Delete subscription")).to_have_count(0)

    opened(viewer, f"/deliveries?message_id={published}")
    expect(viewer.get_by_role("link", name=delivery_id)).to_be_visible()
    expect(viewer.get_by_role("button", name="Redeliver")).to_have_count(0)
    opened(viewer, f"/deliveries/{delivery_id}")
    expect(viewer.get_by_role("button", name="Redeliver")).to_have_count(0)


def test_a_token_that_only_publishes_is_shown_only_the_contracts(
    signed_in: SignedIn, platform: Platform
) -> None:
    publisher = signed_in(platform.tokens.acme_publisher)
    expect(publisher).to_have_url(re.compile(r"/contracts$"))
    navigation = publisher.get_by_role("navigation", name="Main")
    expect(navigation.get_by_role("link")).to_have_text(["Contracts"])
    assert _status(publisher, "/subscriptions") == 403
    assert _status(publisher, "/deliveries") == 403


def test_forged_form_posts_are_refused_and_change_nothing(
    signed_in: SignedIn, platform: Platform, form_subscription: FormSubscription
) -> None:
    action = f"{platform.console_url}/subscriptions/{form_subscription.id}/disable"
    viewer = signed_in(platform.tokens.acme_viewer)
    forged = viewer.context.request.post(action, form={"reason": "forged"}, max_redirects=0)
    assert forged.status == 403

    admin = signed_in(platform.tokens.acme_admin)
    forged = admin.context.request.post(
        action,
        form={"csrf_token": "not-the-session-token", "reason": "forged"},
        max_redirects=0,
    )
    assert forged.status == 403
    shown = platform.cli.subscription(platform.tokens.acme_admin, form_subscription.id)
    assert shown["enabled"] is True


def test_another_tenant_gets_not_found(
    signed_in: SignedIn,
    platform: Platform,
    form_subscription: FormSubscription,
    delivery_id: str,
) -> None:
    globex = signed_in(platform.tokens.globex_admin)
    assert _status(globex, f"/subscriptions/{form_subscription.id}") == 404
    assert _status(globex, f"/subscriptions/{form_subscription.id}/edit") == 404
    assert _status(globex, f"/deliveries/{delivery_id}") == 404


def test_the_signing_keys_page_lists_the_active_key(admin: Page, platform: Platform) -> None:
    keys = platform.cli.run(platform.tokens.acme_admin, "keys", "list")
    active = [key["keyId"] for key in keys if key["active"]]
    assert active, keys
    opened(admin, "/signing-keys")
    expect(admin.get_by_role("heading", level=1)).to_be_visible()
    for key_id in active:
        expect(admin.get_by_role("main")).to_contain_text(key_id)
    screenshot(admin, "signing-keys")


def test_a_contract_page_shows_its_message_type(admin: Page) -> None:
    opened(admin, f"/contracts/{PUBLISHED_TYPE}")
    expect(admin.get_by_role("heading", level=1)).to_be_visible()
    expect(admin.get_by_role("main")).to_contain_text(PUBLISHED_TYPE)
    screenshot(admin, "contract")


def test_the_activity_page_renders(admin: Page) -> None:
    opened(admin, "/activity")
    expect(admin.get_by_role("heading", level=1)).to_be_visible()
    screenshot(admin, "activity")


def test_the_subscriptions_list_fits_a_phone(
    signed_in: SignedIn, platform: Platform, form_subscription: FormSubscription
) -> None:
    phone = signed_in(platform.tokens.acme_admin, viewport=PHONE)
    opened(phone, "/subscriptions")
    expect(phone.get_by_role("main")).to_contain_text(form_subscription.url)
    screenshot(phone, "phone-subscriptions")
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide on a 375 px screen"


def test_no_url_visited_carried_a_token(
    admin: Page, visited_urls: list[str], platform: Platform
) -> None:
    """Over every URL the module's pages asked for (this test runs last; run alone, over
    a sign-in and the page it lands on)."""
    assert visited_urls
    for token in platform.tokens.all():
        assert not [url for url in visited_urls if token in url]
