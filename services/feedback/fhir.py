"""FHIR R4 (UK Core) QuestionnaireResponse → feedback submission.

App backends that already speak FHIR POST a QuestionnaireResponse; this module maps it onto the
same :class:`services.feedback.domain.Submission` the JSON API takes, so validation, scoring,
pseudonymisation and storage are shared. No I/O here. The mapping table is documented in
services/feedback/README.md ("FHIR mapping"); keep the two in step.

Parsing uses ``fhir.resources.R4B`` (the R4B models: QuestionnaireResponse is unchanged from R4,
which UK Core profiles).
"""

from __future__ import annotations

import re
from typing import Any

from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from pydantic import ValidationError

from services.feedback import domain

QUESTIONNAIRE_BASE = "https://fhir.patient-power.nhs.uk/Questionnaire/"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
EPISODE_SYSTEM = "https://fhir.patient-power.nhs.uk/Id/episode"
PROVIDER_EXTENSION = "https://fhir.patient-power.nhs.uk/StructureDefinition/care-provider"

# Questionnaire canonical URL (without |version) → our instrument.
QUESTIONNAIRES: dict[str, str] = {
    QUESTIONNAIRE_BASE + "fft": "fft",
    QUESTIONNAIRE_BASE + "patient-power": "patient_power",
    QUESTIONNAIRE_BASE + "eq5d5l": "eq5d5l",
    QUESTIONNAIRE_BASE + "ohs": "ohs",
    QUESTIONNAIRE_BASE + "oks": "oks",
}

# linkId → field of the instrument's answers, per instrument.
EQ5D_LINK_IDS = {
    "eq5d-mobility": "mobility",
    "eq5d-self-care": "self_care",
    "eq5d-usual-activities": "usual_activities",
    "eq5d-pain-discomfort": "pain_discomfort",
    "eq5d-anxiety-depression": "anxiety_depression",
    "eq5d-vas": "vas",
}
LINK_IDS: dict[str, dict[str, str]] = {
    "fft": {"fft": "fft_answer"},
    "patient_power": {"patient-power": "patient_choice"},
    "eq5d5l": {**EQ5D_LINK_IDS, "timing": "timing", "procedure": "procedure"},
    "ohs": {**{f"ohs-{i}": f"item{i}" for i in range(1, 13)}, "timing": "timing", "procedure": "procedure"},
    "oks": {**{f"oks-{i}": f"item{i}" for i in range(1, 13)}, "timing": "timing", "procedure": "procedure"},
}
FREE_TEXT_LINK_ID = "free-text"  # any instrument; stays in the feedback store
INTEGER_FIELDS = {"fft_answer", "mobility", "self_care", "usual_activities", "pain_discomfort", "anxiety_depression", "vas"}
ACCEPTED_STATUSES = ("completed", "amended")
MAX_ITEMS = 100
INTEGER_CODE = re.compile(r"-?[0-9]{1,9}")


class FhirError(ValueError):
    """The resource cannot be mapped; ``errors`` name each failing FHIR element."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]))
        self.errors = errors


def _fail(field: str, message: str) -> FhirError:
    return FhirError([{"field": field, "message": message}])


def parse(resource: Any) -> QuestionnaireResponse:
    """Validate the resource against the FHIR model. Error messages never echo input values."""
    if not isinstance(resource, dict):
        raise _fail("(body)", "must be a FHIR JSON object")
    if resource.get("resourceType") != "QuestionnaireResponse":
        raise _fail("resourceType", "must be QuestionnaireResponse")
    try:
        return QuestionnaireResponse.model_validate(resource)
    except ValidationError as exc:
        raise FhirError([
            {"field": domain.redact(".".join(str(p) for p in e["loc"])) or "(body)",
             "message": domain.redact(str(e["msg"]))[:200]}
            for e in exc.errors()[:20]
        ]) from exc


def _flatten(items: list[Any] | None, path: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for i, item in enumerate(items or ()):
        here = f"{path}[{i}]"
        out.append((here, item))
        out.extend(_flatten(item.item, f"{here}.item"))
        for j, ans in enumerate(item.answer or ()):
            out.extend(_flatten(ans.item, f"{here}.answer[{j}].item"))
    return out


def _answer_value(item: Any, where: str, field: str) -> Any:
    answers = item.answer or []
    if len(answers) != 1:
        raise _fail(f"{where}.answer", f"linkId '{item.linkId}' needs exactly one answer")
    a = answers[0]
    if a.valueCoding is not None:
        value: Any = a.valueCoding.code
        if value is None:
            raise _fail(f"{where}.answer[0].valueCoding.code", "missing code")
    elif a.valueInteger is not None:
        value = a.valueInteger
    elif a.valueString is not None:
        value = a.valueString
    else:
        raise _fail(f"{where}.answer[0]", "needs valueCoding, valueInteger or valueString")
    if field in INTEGER_FIELDS or field.startswith("item"):
        if isinstance(value, str):
            # ASCII digits only, bounded: str.isdigit() also accepts "²" and "--5", which int() refuses.
            if not INTEGER_CODE.fullmatch(value.strip()):
                raise _fail(f"{where}.answer[0]", f"linkId '{item.linkId}' needs an integer code")
            value = int(value)
    return value


def to_submission(resource: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Map a QuestionnaireResponse to a submission body (for ``domain.Submission``).

    Returns the body and a map from submission field names to FHIR paths, so validation
    errors can name the FHIR element. Raises :class:`FhirError`.
    """
    qr = parse(resource)
    if qr.status not in ACCEPTED_STATUSES:
        raise _fail("status", f"status '{qr.status}' is not accepted: only completed or amended responses are recorded")
    url = (qr.questionnaire or "").split("|", 1)[0]
    instrument = QUESTIONNAIRES.get(url)
    if instrument is None:
        raise _fail("questionnaire", f"unknown questionnaire; expected one of {sorted(QUESTIONNAIRES)}")
    paths: dict[str, str] = {}
    ident = qr.identifier.value if qr.identifier is not None else None
    if not ident:
        raise _fail("identifier.value", "required: the submission id (idempotency key)")
    subject = qr.subject.identifier if qr.subject is not None else None
    if subject is None or subject.system != NHS_NUMBER_SYSTEM or not subject.value:
        raise _fail("subject.identifier", f"required: an identifier with system {NHS_NUMBER_SYSTEM}")
    episode = qr.encounter.identifier if qr.encounter is not None else None
    if episode is None or not episode.value:
        raise _fail("encounter.identifier.value", "required: the episode id")
    provider = None
    for ext in qr.extension or ():
        if ext.url == PROVIDER_EXTENSION:
            ref = ext.valueReference.identifier if ext.valueReference is not None else None
            if ref is None or ref.system != ODS_SYSTEM or not ref.value:
                raise _fail("extension(care-provider).valueReference.identifier",
                            f"required: an identifier with system {ODS_SYSTEM}")
            provider = ref.value
    if provider is None:
        raise _fail("extension", f"required: extension {PROVIDER_EXTENSION} naming the provider's ODS code")
    if qr.authored is None:
        raise _fail("authored", "required")
    authored = qr.authored
    if not hasattr(authored, "tzinfo") or authored.tzinfo is None:
        raise _fail("authored", "must be a date-time with a time zone")

    link_fields = LINK_IDS[instrument]
    values: dict[str, Any] = {}
    free_text: str | None = None
    flat = _flatten(qr.item, "item")
    if len(flat) > MAX_ITEMS:
        raise _fail("item", f"at most {MAX_ITEMS} items")
    for where, item in flat:
        if not item.answer:
            continue  # a group, or a question left unanswered
        if item.linkId == FREE_TEXT_LINK_ID:
            free_text = _answer_value(item, where, "free_text")
            if not isinstance(free_text, str):
                raise _fail(f"{where}.answer[0]", "free text needs valueString")
            paths["free_text"] = where
            continue
        field = link_fields.get(item.linkId)
        if field is None:
            raise _fail(f"{where}.linkId", f"unknown linkId for questionnaire {url}")
        if field in values:
            raise _fail(f"{where}.linkId", f"linkId '{item.linkId}' answered twice")
        values[field] = _answer_value(item, where, field)
        paths[field] = f"{where} (linkId '{item.linkId}')"

    answers: dict[str, Any] = {"instrument": instrument}
    if instrument in ("ohs", "oks"):
        missing = [f"{instrument}-{i}" for i in range(1, 13) if f"item{i}" not in values]
        if missing:
            raise _fail("item", f"missing answers for linkIds {missing}")
        answers["items"] = [values.pop(f"item{i}") for i in range(1, 13)]
        paths["items"] = "item (linkIds " + f"{instrument}-1..{instrument}-12)"
    answers.update(values)

    status_amended = qr.status == "amended"
    version = qr.meta.versionId if qr.meta is not None and qr.meta.versionId else "1"
    body: dict[str, Any] = {
        "submission_id": f"{ident}:amended:{version}" if status_amended else ident,
        "episode_id": episode.value,
        "provider_code": provider,
        "nhs_number": subject.value,
        "authored_at": authored.isoformat(),
        "answers": answers,
    }
    if free_text is not None:
        body["free_text"] = free_text
    if status_amended:
        body["amends_submission_id"] = ident
    paths.update({
        "submission_id": "identifier.value",
        "episode_id": "encounter.identifier.value",
        "provider_code": "extension(care-provider).valueReference.identifier.value",
        "nhs_number": "subject.identifier.value",
        "authored_at": "authored",
        "amends_submission_id": "identifier.value",
        "answers": "item",
    })
    return body, paths


def fhir_field(loc: tuple[Any, ...], paths: dict[str, str]) -> str:
    """The FHIR element for a validation error at ``loc`` in the mapped submission."""
    for part in reversed([str(p) for p in loc]):
        if part in paths:
            return paths[part]
    return ".".join(str(p) for p in loc) or "(body)"
