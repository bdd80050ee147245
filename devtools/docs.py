"""Generate the API documents into docs/: OpenAPI (FastAPI) and AsyncAPI (FastStream) per service.

`python -m devtools.docs` writes them; `python -m devtools.docs --check` fails if they are stale
(CI runs the check through tests/unit/test_docs_current.py).

The consumers take raw bytes (so malformed events can be dead-lettered), which hides their
payload types from FastStream. The AsyncAPI documents are therefore generated from a
documentation broker that declares each service's topics with their contract types; a test checks
that it names exactly the topics the real services subscribe to.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from services.payments import events as payments_events
from shared.contracts import Envelope, FeedbackReceived, PaymentRequested, TransferPosted, TransferRequested
from shared.topics import (
    FEEDBACK_RECEIVED,
    FEEDBACK_RECEIVED_DLQ,
    FEEDBACK_SUBMITTED,
    FEEDBACK_SUBMITTED_DLQ,
    LEDGER_POSTED,
    LEDGER_POSTED_DLQ,
    LEDGER_TRANSFER_REQUESTS,
    LEDGER_TRANSFER_REQUESTS_DLQ,
    PAYMENTS_REQUESTED,
    PAYMENTS_REQUESTED_DLQ,
    TopicSpec,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"
DLQ_NOTE = ("Dead letters: the original bytes, with headers dlq_reason, dlq_kind, dlq_source_topic, "
            "dlq_source_partition, dlq_source_offset.")


def _submission_model() -> Any:
    from services.feedback.domain import Submission

    return Envelope[Submission]


SERVICES = ("feedback", "payments", "ledger", "funds")  # the services with an API (the portal serves pages)


def _create_app(service: str) -> Any:
    import importlib

    if service not in SERVICES:
        raise ValueError(f"unknown service {service}")
    return importlib.import_module(f"services.{service}.app").create_app


def event_map() -> dict[str, dict[str, list[tuple[TopicSpec, Any, str]]]]:
    from services.funds import events as funds_events

    return {
        "feedback": {
            "consumes": [(FEEDBACK_SUBMITTED, _submission_model(), "Submissions from app backends that publish directly (carries NHS numbers: restrict access, short retention).")],
            "produces": [
                (FEEDBACK_RECEIVED, Envelope[FeedbackReceived], "A validated, pseudonymised answer (no NHS number, no free text). Key: episode_id."),
                (FEEDBACK_SUBMITTED_DLQ, bytes, DLQ_NOTE + " NHS-number-like digit runs are redacted."),
            ],
        },
        "payments": {
            "consumes": [
                (PAYMENTS_REQUESTED, Envelope[PaymentRequested], "Commissioners' payment requests. Key: episode_id."),
                (FEEDBACK_RECEIVED, Envelope[FeedbackReceived], "Patients' answers. Key: episode_id (co-partitioned with payments.requested.v1)."),
                (LEDGER_POSTED, Envelope[TransferPosted], "The ledger's answer to each transfer request."),
            ],
            "produces": [
                (LEDGER_TRANSFER_REQUESTS, Envelope[TransferRequested], "Journal entries to post. Key: ordering_key (payment id)."),
                (payments_events.STATEMENTS_DOC[0], Envelope[payments_events.SettlementStatement], payments_events.STATEMENTS_DOC[2]),
                (PAYMENTS_REQUESTED_DLQ, bytes, DLQ_NOTE),
                (FEEDBACK_RECEIVED_DLQ, bytes, DLQ_NOTE),
                (LEDGER_POSTED_DLQ, bytes, DLQ_NOTE),
            ],
        },
        "ledger": {
            "consumes": [(LEDGER_TRANSFER_REQUESTS, Envelope[TransferRequested], "Transfer requests, consumed in batches.")],
            "produces": [
                (LEDGER_POSTED, Envelope[TransferPosted], "Posted, pending, voided or rejected; published after commit via the outbox."),
                (LEDGER_TRANSFER_REQUESTS_DLQ, bytes, DLQ_NOTE),
            ],
        },
        "funds": {"consumes": funds_events.CONSUMES, "produces": funds_events.PRODUCES},
    }


def asyncapi(service: str) -> dict[str, Any]:
    broker = KafkaBroker("kafka:9092", description=f"Patient Power {service} service")
    for spec, model, text in event_map()[service]["consumes"]:
        def handler(body):  # type: ignore[no-untyped-def]  # documentation only, never run
            return None

        # Set explicitly: with postponed annotations a local type would stay an unresolvable string.
        handler.__annotations__ = {"body": model, "return": None}
        handler.__name__ = f"on_{spec.name.replace('.', '_').replace('-', '_')}"
        broker.subscriber(spec.name, title=f"{spec.name}:consume", description=f"{text} Partitions: {spec.partitions}.")(handler)
    for spec, model, text in event_map()[service]["produces"]:
        broker.publisher(spec.name, title=f"{spec.name}:publish", description=f"{text} Partitions: {spec.partitions}.", schema=model)
    spec_obj = AsyncAPI(broker, title=f"Patient Power {service} events", version="1.0.0").to_specification()
    return json.loads(spec_obj.to_json())


def openapi(service: str) -> dict[str, Any]:
    # The document does not depend on the mode; development mode lets the app be built without a
    # deployment's keys (nothing is started: only the routes are read).
    os.environ.setdefault("PATIENT_POWER_MODE", "development")
    return _create_app(service)().openapi()


README = DOCS.parent / "README.md"
TABLE_START, TABLE_END = "<!-- binding-table:start (make docs) -->", "<!-- binding-table:end -->"


def binding_table() -> str:
    """The README's route × scope × binding × refused table, from the services' policies."""
    import importlib

    rows = ["| service | route | scope | the token's binding must cover | refused |", "|---|---|---|---|---|"]
    for service in SERVICES:
        for (method, path), rule in importlib.import_module(f"services.{service}.policy").POLICY.items():
            rows.append(f"| {service} | `{method} {path}` | `{rule.scope}` | {rule.binding} | {rule.refused or '-'} |")
    return "\n".join(rows)


def readme_with_table(text: str) -> str:
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    return text[:start] + "\n" + binding_table() + "\n" + text[end:]


def render() -> dict[Path, str]:
    out: dict[Path, str] = {}
    for service in SERVICES:
        out[DOCS / "openapi" / f"{service}.json"] = json.dumps(openapi(service), indent=2, sort_keys=True) + "\n"
        out[DOCS / "asyncapi" / f"{service}.json"] = json.dumps(asyncapi(service), indent=2, sort_keys=True) + "\n"
    out[README] = readme_with_table(README.read_text())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.docs")
    parser.add_argument("--check", action="store_true", help="fail if docs/ is not current")
    args = parser.parse_args(argv)
    stale = []
    for path, text in render().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(DOCS.parent)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(DOCS.parent)}")
    if stale:
        print("stale API documents (run `make docs`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
