"""The generated API documents in docs/ are current, and the AsyncAPI documentation broker names
exactly the topics the real services subscribe to."""

from __future__ import annotations

import pytest

from devtools import docs


def test_generated_api_documents_are_current() -> None:
    stale = [str(p) for p, text in docs.render().items() if not p.exists() or p.read_text() != text]
    assert not stale, f"run `make docs`; stale: {stale}"


@pytest.mark.parametrize("service", docs.SERVICES)
def test_asyncapi_names_the_topics_the_service_consumes(service: str) -> None:
    broker = docs._create_app(service)().state.runtime.broker
    real = {name for sub in broker.subscribers for name in sub.topic_names}
    documented = {spec.name for spec, _model, _text in docs.event_map()[service]["consumes"]}
    assert real == documented
