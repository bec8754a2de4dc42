"""Property-based fuzzing of the HTTP API from its own OpenAPI spec (schemathesis), against a real uvicorn
server: valid and invalid bodies, query options and headers for every operation; no response may be a 5xx,
and every response must match the spec (status code, content type, schema).

``positive_data_acceptance`` is left out on purpose: a schema-valid body here is any base64 string, which is
rarely an image, so a 4xx is the right answer to most of them."""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from test_serve import LiveServer, make_recognizer  # noqa: E402

#: examples per operation; bounded so the suite stays fast (EMOLENS_FUZZ_EXAMPLES=500 for a longer hunt)
EXAMPLES = int(os.environ.get("EMOLENS_FUZZ_EXAMPLES", "40"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from emolens.serve import Limits, create_app

    # small limits: the fuzzer reaches them (413) without sending megabytes
    limits = Limits(max_upload_bytes=200_000, max_pixels=4_000_000, max_batch=4, max_request_bytes=1_000_000,
                    body_timeout_s=5)
    app = create_app(make_recognizer(tmp_path_factory.mktemp("fuzz_model")), limits=limits)
    with LiveServer(app) as s:
        yield s


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_api_never_fails_on_any_input(case):
    case.call_and_validate(checks=CHECKS, timeout=60)
