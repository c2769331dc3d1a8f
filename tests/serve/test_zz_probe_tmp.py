import collections
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from tests.serve.test_fuzz import api_schema  # noqa

def test_dist(api_schema):
    for result in api_schema.get_all_operations():
        operation = result.ok()
        seen = collections.Counter()
        msgs = collections.Counter()
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def check(case):
            r = case.call()
            seen[r.status_code] += 1
            if r.status_code >= 400:
                msgs[r.json()["error"]["message"][:60]] += 1
        check()
        print(operation.label, dict(seen), msgs.most_common(4))
