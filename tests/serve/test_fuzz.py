"""Property-based fuzzing from the server's own OpenAPI schema (schemathesis): requests that fit the schema
and requests that break it, on every route. No response is a 5xx, and every response matches the schema
(status code, content type, body). Bounded and derandomized: a few dozen requests per route and mode, the
same ones each run, so a failure reproduces."""

import collections

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

# Valid by the schema but not by meaning (a fill-mask text without [MASK], a model name not served):
# those get a 4xx with a message, which this one check would call a rejection of valid data.
MEANING_IS_NOT_IN_THE_SCHEMA = [positive_data_acceptance]


@pytest.fixture(scope="module")
def api_schema(tiny_models):
    from lmtune.infer import load
    from lmtune.serve.app import create_app
    from lmtune.serve.schemas import Limits

    loaded = {name: load(path) for name, path in tiny_models.items()}
    # Small caps keep each request cheap; the caps are in the schema, so the fuzzer probes them too.
    app = create_app(loaded, ui=False, limits=Limits(max_input_chars=300, max_new_tokens=8, max_batch=4))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def with_mask(case):
    """The case with `[MASK]` ending each text (fill-mask needs one; the schema cannot say so)."""

    def masked(text):
        return text[:-6] + "[MASK]" if isinstance(text, str) else text

    if isinstance(case.body, dict) and "text" in case.body:
        text = case.body["text"]
        case.body["text"] = [masked(t) for t in text] if isinstance(text, list) else masked(text)
    return case


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_no_server_errors_and_responses_match_the_schema(api_schema, mode):
    statuses = collections.defaultdict(collections.Counter)
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if mode == schemathesis.GenerationMode.NEGATIVE and operation.method == "get":
            continue  # no parameters: nothing to break
        strategy = operation.as_strategy(generation_mode=mode)
        if operation.path == "/v1/fill-mask" and mode == schemathesis.GenerationMode.POSITIVE:
            strategy = strategy | strategy.map(with_mask)

        @given(case=strategy)
        @settings(
            max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
        )
        def check(case):
            # every default check: not_a_server_error, status code, content type and response schema conformance, ...
            response = case.call_and_validate(excluded_checks=MEANING_IS_NOT_IN_THE_SCHEMA)
            statuses[operation.label][response.status_code] += 1  # noqa: B023 - called at once, in this iteration

        check()
    print(f"\n{mode}: " + "; ".join(f"{label} {dict(codes)}" for label, codes in statuses.items()))
    assert len(statuses) == (7 if mode == schemathesis.GenerationMode.POSITIVE else 5)
    if mode == schemathesis.GenerationMode.POSITIVE:  # the fuzzing reached the models, not just the validation
        assert all(codes[200] >= 3 for label, codes in statuses.items() if "POST" in label), statuses
    else:
        assert all(400 <= code < 500 for label, codes in statuses.items() if "POST" in label for code in codes), (
            statuses
        )
