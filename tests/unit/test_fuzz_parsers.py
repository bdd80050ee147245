"""Fuzzing (hypothesis) of the parser behind every input channel: whatever arrives, each raises
only its documented error type, never anything the caller would turn into a 500 or a stuck partition.

| channel | parser | may raise |
|---|---|---|
| Kafka, every topic a service consumes | ``shared.contracts.parse_envelope`` (and ``Envelope[Submission]`` for feedback intake) | ``pydantic.ValidationError`` |
| feedback HTTP JSON, single and batch items | ``services.feedback.api.parse_submission`` / ``domain.Submission.model_validate`` | ``Problem`` (422) / ``ValidationError`` |
| feedback HTTP FHIR | ``services.feedback.fhir.to_submission`` (``parse``, ``fhir_field``) | ``fhir.FhirError`` |
| payments HTTP batch items | ``PaymentRequested.model_validate`` (the batch endpoint's per-item check) | ``ValidationError`` |
| payments scheme files | ``services.payments.schemes.parse_scheme`` | ``SchemeError`` |

Inputs: arbitrary bytes and text, arbitrary JSON documents (st.recursive), and valid examples
mutated (keys dropped or added, values replaced by other JSON, retyped, given numeric-looking or
control-character text). Accepted values must also be storable: no NUL (PostgreSQL text and
jsonb cannot hold it) and, for events, a lossless JSON round trip.
"""

from __future__ import annotations

import copy
import json
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.feedback import fhir
from services.feedback.api import parse_submission
from services.feedback.domain import Submission
from services.payments.schemes import SchemeError, parse_scheme
from shared.contracts import (
    EVENT_TYPES,
    Envelope,
    FeedbackReceived,
    PaymentRequested,
    TransferPosted,
    TransferRequested,
    parse_envelope,
)
from shared.http import Problem

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NHS = "9990000018"
WHEN = "2026-11-01T09:30:00+00:00"

# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------
# Text that looks numeric (Unicode digits and numerals, signs, spaces): where parsers call int().
numeric_text = st.text(alphabet=st.characters(categories=["Nd", "No"]) | st.sampled_from("0123456789-+_ ."), max_size=8)
nasty_text = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("\x00\x01\n\t\u2028\ufeff"), max_size=20)
leaf_text = st.text(max_size=20) | numeric_text | nasty_text | st.sampled_from(["", " ", "null", "1", "-1", "1e400", WHEN])
json_leaves = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
               | st.floats(allow_nan=False, allow_infinity=False) | leaf_text)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


def _slots(doc: Any, path: tuple = ()) -> list[tuple]:
    """Every (path to a container, key) in a JSON document."""
    out: list[tuple] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((path, k))
            out.extend(_slots(v, (*path, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append((path, i))
            out.extend(_slots(v, (*path, i)))
    return out


def _at(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _retyped(value: Any) -> list[Any]:
    """The same value in other JSON types."""
    out: list[Any] = [None, [value], {"value": value}, True, 0, 1.5, "", str(value)]
    if isinstance(value, str):
        out += [value * 3, value.upper(), f" {value} ", value[:-1]]
        try:
            out.append(int(value))
        except ValueError:
            pass
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        out += [-value, value + 1, value * 10**12, str(value)]
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], max_mutations: int = 4) -> dict[str, Any]:
    """A valid example with 1..max_mutations edits: drop a key, add one, replace or retype a value."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, max_mutations))):
        slots = _slots(doc)
        action = draw(st.sampled_from(["drop", "add", "replace", "retype", "text"]))
        if not slots or action == "add":
            containers = [(), *(p + (k,) for p, k in slots)]
            target = _at(doc, draw(st.sampled_from(containers)))
            if isinstance(target, dict):
                target[draw(st.text(max_size=12))] = draw(json_values)
            elif isinstance(target, list):
                target.insert(draw(st.integers(0, len(target))), draw(json_values))
            continue
        path, key = draw(st.sampled_from(slots))
        container = _at(doc, path)
        if action == "drop":
            del container[key]
        elif action == "replace":
            container[key] = draw(json_values)
        elif action == "retype":
            container[key] = draw(st.sampled_from(_retyped(container[key])))
        else:
            container[key] = draw(leaf_text)
    return doc


def _no_nul(value: Any, skip: frozenset[str] = frozenset()) -> bool:
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, dict):
        return all(_no_nul(k) and (k in skip or _no_nul(v, skip)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_no_nul(v, skip) for v in value)
    return True


# ---------------------------------------------------------------------------------------------
# Kafka: event envelopes (every consumed topic)
# ---------------------------------------------------------------------------------------------
SUBMISSION = {"submission_id": "sub-1", "episode_id": "ep-1", "provider_code": "RJ1", "nhs_number": NHS,
              "authored_at": WHEN, "answers": {"instrument": "fft", "fft_answer": 2}, "free_text": "Kind staff"}
PAYLOADS: dict[str, tuple[type, dict[str, Any]]] = {
    "payments.requested.v1": (PaymentRequested, {
        "payment_id": "pay-1", "episode_id": "ep-1", "commissioner_code": "QWE", "provider_code": "RJ1",
        "service_type": "maternity", "activity_date": "2026-11-01", "amount_pence": 123457}),
    "feedback.received.v1": (FeedbackReceived, {
        "submission_id": "sub-1", "episode_id": "ep-1", "provider_code": "RJ1", "patient_pseudonym": "ab" * 32,
        "instrument": "fft", "authored_at": WHEN, "fft_answer": 4}),
    "ledger.transfer-requested.v1": (TransferRequested, {
        "transfer_id": "settle:pay-1", "kind": "posted", "ordering_key": "pay-1",
        "legs": [{"account_id": "commissioner:QWE", "amount_pence": -500}, {"account_id": "provider:RJ1", "amount_pence": 500}],
        "cause": {"kind": "settlement", "payment_id": "pay-1", "period": "2026-11", "note": "monthly"}}),
    "ledger.posted.v1": (TransferPosted, {
        "transfer_id": "settle:pay-1", "status": "rejected", "entry_seq": None, "entry_hash": None, "reason": "floor"}),
    "feedback.submitted.v1": (Submission, SUBMISSION),  # feedback's Kafka intake: Envelope[Submission]
}
# Not stored anywhere, so not held to the no-NUL rule: the envelope's type and the ledger's hash.
UNSTORED = frozenset({"type", "entry_hash"})


def test_every_event_type_is_fuzzed() -> None:
    assert set(EVENT_TYPES) <= set(PAYLOADS)
    for name, model in EVENT_TYPES.items():
        assert PAYLOADS[name][0] is model


def _envelope(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"event_id": "0b7c6a3e-8f5e-4c1e-9a77-3d2f0f6d7c11", "type": type_, "occurred_at": WHEN,
            "correlation_id": "corr-1", "causation_id": None, "producer": "tests", "data": data}


def _parse(raw: bytes, payload: type) -> Any:
    """parse_envelope, checked: only ValidationError; an accepted event is storable and round-trips."""
    try:
        env = parse_envelope(raw, payload)
    except ValidationError:
        return None
    assert isinstance(env, Envelope) and isinstance(env.data, payload)
    dumped = env.model_dump_json().encode()
    assert parse_envelope(dumped, payload) == env
    assert _no_nul(json.loads(dumped), UNSTORED)
    return env


@pytest.mark.parametrize("topic", sorted(PAYLOADS))
def test_valid_examples_parse(topic: str) -> None:
    payload, data = PAYLOADS[topic]
    assert _parse(json.dumps(_envelope(topic, data)).encode(), payload) is not None


@pytest.mark.parametrize("topic", sorted(PAYLOADS))
@FUZZ
@given(raw=st.binary(max_size=300))
def test_envelope_from_arbitrary_bytes(topic: str, raw: bytes) -> None:
    _parse(raw, PAYLOADS[topic][0])


@pytest.mark.parametrize("topic", sorted(PAYLOADS))
@FUZZ
@given(doc=json_values)
def test_envelope_from_arbitrary_json(topic: str, doc: Any) -> None:
    _parse(json.dumps(doc).encode(), PAYLOADS[topic][0])


@pytest.mark.parametrize("topic", sorted(PAYLOADS))
@FUZZ
@given(data=st.data())
def test_envelope_from_mutated_valid_event(topic: str, data: st.DataObject) -> None:
    payload, example = PAYLOADS[topic]
    doc = data.draw(mutated(_envelope(topic, example), max_mutations=3))
    raw = json.dumps(doc, ensure_ascii=data.draw(st.booleans())).encode()
    if data.draw(st.booleans()):  # and truncated or with a byte flipped: what a broken producer sends
        cut = data.draw(st.integers(0, len(raw)))
        raw = raw[:cut] + bytes([data.draw(st.integers(0, 255))]) + raw[cut + 1:]
    _parse(raw, payload)


# Every free-form string an event carries into a database: only NUL-free text may be accepted.
FREE_TEXT_FIELDS = [
    *((topic, ("correlation_id",)) for topic in sorted(PAYLOADS)),
    *((topic, ("causation_id",)) for topic in sorted(PAYLOADS)),
    *((topic, ("producer",)) for topic in sorted(PAYLOADS)),
    *(("ledger.transfer-requested.v1", ("data", "cause", f)) for f in
      ("payment_id", "episode_id", "provider_code", "period", "scheme_id", "settlement_id", "appeal_id", "note")),
    ("ledger.posted.v1", ("data", "reason")),
    ("feedback.submitted.v1", ("data", "free_text")),
]


@pytest.mark.parametrize(("topic", "path"), FREE_TEXT_FIELDS, ids=lambda v: ".".join(v) if isinstance(v, tuple) else v)
@FUZZ
@given(text=nasty_text)
def test_free_text_fields_accept_only_storable_text(topic: str, path: tuple[str, ...], text: str) -> None:
    payload, example = PAYLOADS[topic]
    doc = _envelope(topic, copy.deepcopy(example))
    _at(doc, path[:-1])[path[-1]] = text
    _parse(json.dumps(doc).encode(), payload)


def test_envelope_rejects_deep_nesting_and_non_json() -> None:
    for raw in (b"[" * 100_000, b"{\"data\":" * 50_000, b"\xff\xfe", b"", b"null", "\x00".encode()):
        with pytest.raises(ValidationError):
            parse_envelope(raw, TransferRequested)


# ---------------------------------------------------------------------------------------------
# feedback: JSON submissions (single, batch items) and FHIR
# ---------------------------------------------------------------------------------------------
SUBMISSIONS = [
    SUBMISSION,
    {**SUBMISSION, "answers": {"instrument": "patient_power", "patient_choice": "hold_back"}, "amends_submission_id": "sub-0"},
    {**SUBMISSION, "answers": {"instrument": "eq5d5l", "mobility": 1, "self_care": 2, "usual_activities": 3,
                               "pain_discomfort": 4, "anxiety_depression": 5, "vas": 70, "timing": "pre_op",
                               "procedure": "primary_hip_replacement"}},
    {**SUBMISSION, "answers": {"instrument": "ohs", "items": [4, 3, 2, 1, 0, 4, 3, 2, 1, 0, 4, 3], "timing": "post_op",
                               "procedure": "primary_hip_replacement"}},
]


def _submission(body: Any) -> Submission | None:
    """Submission.model_validate, checked: only ValidationError; an accepted one is storable."""
    try:
        sub = Submission.model_validate(body)
    except ValidationError:
        return None
    assert sub.authored_at.tzinfo is not None
    assert len(sub.nhs_number) == 10 and sub.nhs_number.isdigit()
    assert _no_nul(sub.model_dump(mode="json"))
    return sub


@pytest.mark.parametrize("example", range(len(SUBMISSIONS)))
@FUZZ
@given(data=st.data())
def test_submission_from_mutated_valid_submission(example: int, data: st.DataObject) -> None:
    _submission(data.draw(mutated(SUBMISSIONS[example])))


@FUZZ
@given(body=json_values)
def test_submission_from_arbitrary_json(body: Any) -> None:
    _submission(body)


@FUZZ
@given(body=json_values | mutated(SUBMISSION), key=st.none() | st.text(max_size=20))
def test_http_submission_parser_raises_only_a_422_problem(body: Any, key: str | None) -> None:
    """What POST /v1/submissions and each item of /v1/submissions/batch go through."""
    try:
        sub = parse_submission(body, key)
    except Problem as p:
        assert p.status == 422 and p.extra.get("errors")
        assert NHS not in json.dumps(p.extra["errors"]) + p.detail  # never echoes an NHS number
        return
    assert isinstance(sub, Submission)
    if key is not None:
        assert sub.submission_id == key


def questionnaire_response(instrument: str = "fft", items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "identifier": {"value": "qr-1"},
        "meta": {"versionId": "2"},
        "questionnaire": fhir.QUESTIONNAIRE_BASE + instrument,
        "status": "completed",
        "subject": {"identifier": {"system": fhir.NHS_NUMBER_SYSTEM, "value": NHS}},
        "encounter": {"identifier": {"system": fhir.EPISODE_SYSTEM, "value": "ep-1"}},
        "authored": WHEN,
        "extension": [{"url": fhir.PROVIDER_EXTENSION,
                       "valueReference": {"identifier": {"system": fhir.ODS_SYSTEM, "value": "RJ1"}}}],
        "item": items if items is not None else [
            {"linkId": "fft", "answer": [{"valueCoding": {"code": "1"}}]},
            {"linkId": "free-text", "answer": [{"valueString": "Kind staff"}]},
        ],
    }


RESOURCES = [
    questionnaire_response(),
    questionnaire_response("patient-power", [{"linkId": "patient-power", "answer": [{"valueCoding": {"code": "not_sure"}}]}]),
    questionnaire_response("eq5d5l", [
        *({"linkId": link, "answer": [{"valueInteger": 2}]} for link in list(fhir.EQ5D_LINK_IDS)[:5]),
        {"linkId": "eq5d-vas", "answer": [{"valueInteger": 80}]},
        {"linkId": "timing", "answer": [{"valueCoding": {"code": "pre_op"}}]},
        {"linkId": "procedure", "answer": [{"valueString": "primary_knee_replacement"}]},
    ]),
    questionnaire_response("oks", [
        {"linkId": "group", "item": [{"linkId": f"oks-{i}", "answer": [{"valueCoding": {"code": str(i % 5)}}]} for i in range(1, 13)]},
        {"linkId": "timing", "answer": [{"valueCoding": {"code": "post_op"}}]},
        {"linkId": "procedure", "answer": [{"valueString": "primary_knee_replacement"}]},
    ]),
]


def _fhir(resource: Any) -> None:
    """fhir.to_submission, checked: only FhirError; a mapped body then fails only as a ValidationError
    (which the API names by FHIR element with fhir_field)."""
    try:
        body, paths = fhir.to_submission(resource)
    except fhir.FhirError as exc:
        assert exc.errors and all(set(e) == {"field", "message"} for e in exc.errors)
        return
    try:
        Submission.model_validate(body)
    except ValidationError as exc:
        for e in exc.errors():
            assert isinstance(fhir.fhir_field(e["loc"], paths), str)


def test_valid_resources_map() -> None:
    for resource in RESOURCES:
        body, _ = fhir.to_submission(resource)
        assert _submission(body) is not None, body


@pytest.mark.parametrize("example", range(len(RESOURCES)))
@FUZZ
@given(data=st.data())
def test_fhir_from_mutated_valid_resource(example: int, data: st.DataObject) -> None:
    _fhir(data.draw(mutated(RESOURCES[example])))


@FUZZ
@given(code=numeric_text | leaf_text, link=st.sampled_from(["fft", "oks-3"]))
def test_fhir_coded_integer_answers(code: str, link: str) -> None:
    """Integer answers sent as codes go through int(): any text must end in FhirError or a number."""
    example = RESOURCES[0] if link == "fft" else RESOURCES[3]
    resource = copy.deepcopy(example)
    for item in (resource["item"][0].get("item") or resource["item"]):
        if item["linkId"] == link:
            item["answer"] = [{"valueCoding": {"code": code}}]
    _fhir(resource)


@FUZZ
@given(resource=json_values | st.dictionaries(st.sampled_from(["resourceType", "status", "item", "identifier", "authored"]),
                                              json_values).map(lambda d: {**d, "resourceType": "QuestionnaireResponse"}))
def test_fhir_from_arbitrary_json(resource: Any) -> None:
    _fhir(resource)


# ---------------------------------------------------------------------------------------------
# payments: batch items and scheme files
# ---------------------------------------------------------------------------------------------
@FUZZ
@given(item=json_values | mutated(PAYLOADS["payments.requested.v1"][1]))
def test_payment_batch_item_validation(item: Any) -> None:
    """POST /v1/payment-requests/batch validates each item with PaymentRequested.model_validate."""
    try:
        req = PaymentRequested.model_validate(item)
    except ValidationError as exc:
        for e in exc.errors():  # the batch endpoint builds each item's detail from these
            assert isinstance(".".join(str(p) for p in e["loc"]), str) and isinstance(e["msg"], str)
        return
    assert req.amount_pence > 0


SCHEME_TOML = """\
scheme_id = "england-pilot"
version = 1
title = "Patient power payments pilot"
effective_from = 2026-04-01
effective_to = 2027-03-31
priority = 0
at_risk_bps = 1000
decision_window_days = 56
patient_choice_overrides = true
settlement_period = "monthly"
min_responses_per_period = 30
cap_bps = 300
allow_amendments = false
appeal_window_days = 30

[scope]
regions = ["Y56"]
commissioners = []
providers = ["RJ1"]
service_types = ["maternity"]

[fft_release_bps]
very_good = 10000
good = 10000
neither = 10000
poor = 5000
very_poor = 0
"""
SCHEME_LINES = SCHEME_TOML.splitlines()

toml_values = st.one_of(
    st.integers(-(2**70), 2**70).map(str), st.floats().map(repr),
    st.sampled_from(["true", "false", "nan", "-inf", "2026-02-30", "2026-04-01T10:00:00Z", "10:00:00", "1979-05-27T07:32:00",
                     "[]", "{}", "[1, \"a\"]", "{ a = 1 }", "\"\"", "'''x'''", "0x1F", "1_000", "+1", "[[1]]"]),
    st.text(max_size=12).map(json.dumps),
    st.lists(st.sampled_from(["\"Y56\"", "\"QWE\"", "\"RJ1\"", "1", "\"maternity\"", "\"\""]), max_size=4).map(lambda v: f"[{', '.join(v)}]"),
)


@st.composite
def scheme_texts(draw: st.DrawFn) -> str:
    """The valid file with lines dropped, duplicated, retyped or garbled."""
    lines = list(SCHEME_LINES)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "dup", "value", "garble", "insert"]))
        if action == "drop":
            del lines[i]
        elif action == "dup":
            lines.insert(i, lines[i])
        elif action == "value" and "=" in lines[i]:
            lines[i] = lines[i].split("=", 1)[0] + "= " + draw(toml_values)
        elif action == "garble":
            cut = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:cut] + draw(st.text(alphabet=string.printable + "\x00é[]{}=\"'", max_size=4)) + lines[i][cut:]
        else:
            key = draw(st.sampled_from(["extra", "scope.regions", "fft_release_bps.dont_know", "version", "[scope]", "[[x]]"]))
            lines.insert(i, key if key.startswith("[") else f"{key} = {draw(toml_values)}")
        if not lines:
            break
    return "\n".join(lines)


def _scheme(text: str) -> None:
    try:
        scheme = parse_scheme(text, "fuzz.toml")
    except SchemeError as exc:
        assert str(exc).startswith("fuzz.toml: ")  # names the file
        return
    assert scheme.cap_bps <= scheme.at_risk_bps
    assert scheme.effective_to is None or scheme.effective_to >= scheme.effective_from


def test_valid_scheme_parses() -> None:
    scheme = parse_scheme(SCHEME_TOML)
    assert scheme.key == "england-pilot@1"


@FUZZ
@given(text=st.text(max_size=300))
def test_scheme_from_arbitrary_text(text: str) -> None:
    _scheme(text)


@FUZZ
@given(text=scheme_texts())
def test_scheme_from_mutated_valid_file(text: str) -> None:
    _scheme(text)


def test_scheme_with_deep_nesting_is_a_scheme_error() -> None:
    for text in ("a = " + "[" * 5000 + "]" * 5000, "a = " + "{b = " * 5000 + "1" + "}" * 5000):
        with pytest.raises(SchemeError):
            parse_scheme(text, "deep.toml")

