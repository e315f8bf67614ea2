"""Property-based run over the whole OpenAPI schema (schemathesis): whatever a client sends
that the schema allows, and plenty it does not, no route answers with a 5xx. Bounded to a few
examples per operation so it stays well under a minute on 2 cores."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra")
from hypothesis import HealthCheck, settings  # noqa: E402

from tests.server.conftest import install_run  # noqa: E402

EXAMPLES = 25


@pytest.fixture(scope="module")
def api_schema(tiny_run, tmp_path_factory):
    from limner.server.app import create_app
    from limner.server.settings import StudioSettings

    home = tmp_path_factory.mktemp("schemathesis-home")
    app = create_app(StudioSettings(home=home, allowed_hosts=("testserver",), workers=0, queue_limit=20),
                     workers=False)
    store = app.state.studio.store
    user = store.ensure_local_user()
    install_run(home, user.id, tiny_run)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    store.close()


def test_no_server_errors(api_schema):
    """Every operation, EXAMPLES generated requests each (schemathesis's pytest plugin is not
    used: it does not load under this pytest; the operations are driven with hypothesis here)."""
    from hypothesis import given

    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 40

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def check(case):
            response = case.call(headers={"Host": "testserver"})
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")

        check()
    assert not failures, "\n".join(failures[:20])
