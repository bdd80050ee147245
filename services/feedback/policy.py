"""Who may call what: the scope each feedback route needs (deny by default, see shared/auth.py)."""

POLICY = {
    ("POST", "/v1/submissions"): "feedback:write",
    ("POST", "/v1/submissions/batch"): "feedback:write",
    ("POST", "/v1/fhir/QuestionnaireResponse"): "feedback:write",
    ("GET", "/v1/reports/fft"): "feedback:read",
    ("GET", "/v1/reports/proms"): "feedback:read",
}
