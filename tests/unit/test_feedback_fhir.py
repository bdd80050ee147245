"""Unit tests for services/feedback/fhir.py: QuestionnaireResponse → submission mapping and its errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from services.feedback import fhir
from services.feedback.domain import Submission

NHS = "9990000018"


def qr(instrument: str = "fft", items: list[dict] | None = None, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "identifier": {"value": "qr-1"},
        "questionnaire": fhir.QUESTIONNAIRE_BASE + instrument,
        "status": "completed",
        "subject": {"identifier": {"system": fhir.NHS_NUMBER_SYSTEM, "value": NHS}},
        "encounter": {"identifier": {"system": fhir.EPISODE_SYSTEM, "value": "ep-1"}},
        "authored": "2026-11-01T09:30:00+00:00",
        "extension": [{"url": fhir.PROVIDER_EXTENSION,
                       "valueReference": {"identifier": {"system": fhir.ODS_SYSTEM, "value": "RJ1"}}}],
        "item": items if items is not None else [{"linkId": "fft", "answer": [{"valueCoding": {"code": "1"}}]}],
    }
    resource.update(extra)
    return resource


def coded(link: str, code: str) -> dict:
    return {"linkId": link, "answer": [{"valueCoding": {"code": code}}]}


def integer(link: str, value: int) -> dict:
    return {"linkId": link, "answer": [{"valueInteger": value}]}


def oxford_items(prefix: str, value: int = 2) -> list[dict]:
    return [integer(f"{prefix}-{i}", value) for i in range(1, 13)] + [coded("timing", "post_op"),
                                                                     coded("procedure", "primary_knee_replacement")]


def mapped(resource: dict) -> Submission:
    body, _ = fhir.to_submission(resource)
    return Submission.model_validate(body)


def fails(resource: Any, field: str, message: str = "") -> None:
    with pytest.raises(fhir.FhirError) as exc:
        fhir.to_submission(resource)
    assert any(field in e["field"] and message in e["message"] for e in exc.value.errors), exc.value.errors
    assert NHS not in str(exc.value.errors)


# ---------------------------------------------------------------------------------------------
# Mapping
# ---------------------------------------------------------------------------------------------
def test_fft_maps_identity_episode_provider_and_free_text() -> None:
    r = qr(items=[coded("fft", "5"), {"linkId": "free-text", "answer": [{"valueString": "Cold food"}]}])
    s = mapped(r)
    assert (s.submission_id, s.episode_id, s.provider_code, s.nhs_number) == ("qr-1", "ep-1", "RJ1", NHS)
    assert s.answers.instrument == "fft" and s.answers.fft_answer == 5  # type: ignore[union-attr]
    assert s.free_text == "Cold food" and s.amends_submission_id is None
    assert s.authored_at.isoformat() == "2026-11-01T09:30:00+00:00"


def test_fft_accepts_value_integer_and_versioned_canonical() -> None:
    s = mapped(qr(items=[integer("fft", 6)], questionnaire=fhir.QUESTIONNAIRE_BASE + "fft|2.0"))
    assert s.answers.fft_answer == 6  # type: ignore[union-attr]


@pytest.mark.parametrize("choice", ["pay_in_full", "hold_back", "not_sure"])
def test_patient_power(choice: str) -> None:
    s = mapped(qr("patient-power", [coded("patient-power", choice)]))
    assert s.answers.instrument == "patient_power" and s.answers.patient_choice == choice  # type: ignore[union-attr]


def test_eq5d5l_all_link_ids() -> None:
    items = [coded("eq5d-mobility", "2"), coded("eq5d-self-care", "1"), coded("eq5d-usual-activities", "1"),
             coded("eq5d-pain-discomfort", "4"), coded("eq5d-anxiety-depression", "3"), integer("eq5d-vas", 70),
             coded("timing", "pre_op"), coded("procedure", "primary_hip_replacement")]
    s = mapped(qr("eq5d5l", items))
    a = s.answers
    assert (a.mobility, a.self_care, a.usual_activities, a.pain_discomfort, a.anxiety_depression, a.vas) == (2, 1, 1, 4, 3, 70)  # type: ignore[union-attr]
    assert (a.timing, a.procedure) == ("pre_op", "primary_hip_replacement")  # type: ignore[union-attr]


@pytest.mark.parametrize("instrument", ["ohs", "oks"])
def test_oxford_twelve_items_in_order(instrument: str) -> None:
    items = oxford_items(instrument)
    items[0] = integer(f"{instrument}-1", 4)
    items[11] = coded(f"{instrument}-12", "0")  # valueCoding codes work too
    s = mapped(qr(instrument, list(reversed(items))))
    assert s.answers.items == (4,) + (2,) * 10 + (0,)  # type: ignore[union-attr]
    assert s.answers.instrument == instrument


def test_nested_groups_are_flattened() -> None:
    s = mapped(qr(items=[{"linkId": "group", "item": [coded("fft", "2")]}]))
    assert s.answers.fft_answer == 2  # type: ignore[union-attr]


def test_amended_is_an_amendment_with_its_own_id() -> None:
    s = mapped(qr(status="amended", meta={"versionId": "3"}))
    assert s.submission_id == "qr-1:amended:3" and s.amends_submission_id == "qr-1"
    assert mapped(qr(status="amended")).submission_id == "qr-1:amended:1"


def test_unanswered_question_is_skipped() -> None:
    s = mapped(qr(items=[{"linkId": "free-text"}, coded("fft", "3")]))
    assert s.free_text is None


# ---------------------------------------------------------------------------------------------
# Every mapping error names the FHIR element
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["in-progress", "entered-in-error", "stopped", "draft"])
def test_statuses_other_than_completed_or_amended_refused(status: str) -> None:
    fails(qr(status=status), "status", f"status '{status}' is not accepted: only completed or amended responses are recorded")


def test_not_an_object_or_not_a_questionnaire_response() -> None:
    fails([1], "(body)", "FHIR JSON object")
    fails(qr(resourceType="Patient"), "resourceType", "QuestionnaireResponse")


def test_fhir_model_errors_are_reported_by_element() -> None:
    fails(qr(item="nope"), "item")
    fails(qr(subject={"identifier": {"value": 9990000018}}), "subject")


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"questionnaire": "https://example.org/Questionnaire/hcahps"}, "questionnaire", "unknown questionnaire"),
        ({"questionnaire": None}, "questionnaire", "unknown questionnaire"),
        ({"identifier": None}, "identifier.value", "submission id"),
        ({"subject": None}, "subject.identifier", fhir.NHS_NUMBER_SYSTEM),
        ({"subject": {"identifier": {"system": "https://example/other", "value": NHS}}}, "subject.identifier", "system"),
        ({"encounter": None}, "encounter.identifier.value", "episode"),
        ({"extension": []}, "extension", fhir.PROVIDER_EXTENSION),
        ({"extension": [{"url": fhir.PROVIDER_EXTENSION, "valueReference": {"identifier": {"system": "x", "value": "RJ1"}}}]},
         "extension(care-provider)", fhir.ODS_SYSTEM),
        ({"authored": None}, "authored", "required"),
        ({"authored": "2026-11-01"}, "authored", "time zone"),
        ({"authored": "2026-11-01T10:00:00"}, "authored", ""),  # refused by the FHIR model: a time needs a zone
    ],
)
def test_envelope_errors(change: dict, field: str, message: str) -> None:
    resource = qr()
    for k, v in change.items():
        if v is None:
            resource.pop(k)
        else:
            resource[k] = v
    fails(resource, field, message)


@pytest.mark.parametrize(
    ("items", "field", "message"),
    [
        ([coded("colour", "red")], "item[0].linkId", "unknown linkId"),
        ([coded("fft", "1"), coded("fft", "2")], "item[1].linkId", "answered twice"),
        ([{"linkId": "fft", "answer": [{"valueCoding": {"code": "1"}}, {"valueCoding": {"code": "2"}}]}], "item[0].answer", "exactly one"),
        ([{"linkId": "fft", "answer": [{"valueCoding": {"system": "x"}}]}], "valueCoding.code", "missing code"),
        ([{"linkId": "fft", "answer": [{"valueBoolean": True}]}], "item[0].answer[0]", "valueCoding, valueInteger or valueString"),
        ([coded("fft", "very good")], "item[0].answer[0]", "integer code"),
        ([{"linkId": "free-text", "answer": [{"valueInteger": 3}]}, coded("fft", "1")], "item[0].answer[0]", "valueString"),
        ([coded("fft", "1")] * 101, "item", "at most"),
    ],
)
def test_item_errors(items: list[dict], field: str, message: str) -> None:
    fails(qr(items=items), field, message)


def test_oxford_missing_items_listed() -> None:
    fails(qr("ohs", oxford_items("ohs")[:10] + oxford_items("ohs")[12:]), "item", "['ohs-11', 'ohs-12']")


def test_oxford_link_ids_belong_to_their_instrument() -> None:
    fails(qr("ohs", oxford_items("oks")), "linkId", "unknown linkId")


# ---------------------------------------------------------------------------------------------
# Domain validation errors are mapped back to FHIR elements
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"subject": {"identifier": {"system": fhir.NHS_NUMBER_SYSTEM, "value": "9990000019"}}}, "subject.identifier.value"),
        ({"item": [coded("fft", "7")]}, "item[0] (linkId 'fft')"),
        ({"encounter": {"identifier": {"value": "bad id!"}}}, "encounter.identifier.value"),
        ({"extension": [{"url": fhir.PROVIDER_EXTENSION, "valueReference": {"identifier": {"system": fhir.ODS_SYSTEM, "value": "rj1"}}}]},
         "extension(care-provider).valueReference.identifier.value"),
    ],
)
def test_domain_errors_name_fhir_elements(change: dict, expected: str) -> None:
    resource = copy.deepcopy(qr())
    resource.update(change)
    body, paths = fhir.to_submission(resource)
    with pytest.raises(ValidationError) as exc:
        Submission.model_validate(body)
    fields = [fhir.fhir_field(e["loc"], paths) for e in exc.value.errors()]
    assert expected in fields, fields


def test_oxford_item_range_error_names_the_items() -> None:
    items = oxford_items("ohs")
    items[2] = integer("ohs-3", 5)
    body, paths = fhir.to_submission(qr("ohs", items))
    with pytest.raises(ValidationError) as exc:
        Submission.model_validate(body)
    assert fhir.fhir_field(exc.value.errors()[0]["loc"], paths) == "item (linkIds ohs-1..ohs-12)"
    assert "items [3] must be scored 0 to 4" in str(exc.value)
