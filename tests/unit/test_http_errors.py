"""Domain errors become the right HTTP answer, as RFC 9457 problem details."""

from __future__ import annotations

from http import HTTPStatus

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from service_common.errors import FailedPrecondition, StaleEtag, WebhooksError
from service_common.http_errors import PROBLEM_JSON, problem_middleware, status_of


@pytest.mark.parametrize(
    ("error", "status"),
    [
        # The caller's own condition (an etag) failed: 412.
        (StaleEtag("changed since"), HTTPStatus.PRECONDITION_FAILED),
        # The resource's state forbids the call: a conflict with it.
        (FailedPrecondition("the payload was expunged"), HTTPStatus.CONFLICT),
    ],
)
def test_preconditions_answer_by_whose_condition_failed(
    error: WebhooksError, status: HTTPStatus
) -> None:
    assert status_of(error) == status


async def test_a_failed_precondition_is_answered_as_a_problem_naming_why() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise FailedPrecondition("the payload of event m1 was expunged on 2026-01-02")

    response = await problem_middleware(make_mocked_request("POST", "/v1/x"), handler)
    assert isinstance(response, web.Response)
    assert response.status == 409
    assert response.content_type == PROBLEM_JSON
    assert isinstance(response.body, bytes)
    assert orjson.loads(response.body) == {
        "type": "about:blank",
        "title": "Conflict",
        "status": 409,
        "detail": "the payload of event m1 was expunged on 2026-01-02",
    }
