"""Who may call what on feedback (deny by default, see shared/auth.py) and what each token's
binding must cover (shared/reach.py). The README's threat model prints this table."""

from __future__ import annotations

from shared.auth import Rule

_WRITE = Rule("feedback:write", "acts for the submission's provider (national app backends, or a trust's own: ods)",
              "403 another trust; 422 an unknown trust or site, an implausible authored_at")
POLICY = {
    ("POST", "/v1/submissions"): _WRITE,
    ("POST", "/v1/submissions/batch"): Rule("feedback:write", "each item's provider",
                                            "per item: 403 (forbidden) or 422 (invalid), the others go through"),
    ("POST", "/v1/fhir/QuestionnaireResponse"): _WRITE,
    ("GET", "/v1/reports/fft"): Rule("feedback:read", "reports only the providers the binding sees",
                                     "nothing: suppression is recomputed within what it sees"),
    ("GET", "/v1/reports/proms"): Rule("feedback:read", "reports only the providers the binding sees", "nothing: others are left out"),
    # Publication (read_api.py): the suppressed figures of the portal's public pages.
    ("GET", "/v1/publication/fft"): Rule("reports:read", "reports only the providers the binding sees",
                                         "nothing: suppression is recomputed within what it sees"),
    ("GET", "/v1/publication/fft.csv"): Rule("reports:read", "reports only the providers the binding sees",
                                             "nothing: suppression is recomputed within what it sees"),
    ("GET", "/v1/publication/fft/providers/{provider_code}/series"): Rule(
        "reports:read", "the trust (suppression recomputed within what the binding sees)", "403 outside the binding; 404 an unknown trust"),
    ("GET", "/v1/publication/fft/periods"): Rule("reports:read", "the providers the binding sees", "nothing: others are left out"),
    ("GET", "/v1/publication/proms"): Rule("reports:read", "reports only the providers the binding sees", "nothing: others are left out"),
}
