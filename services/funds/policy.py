"""Who may call what on the funds service (deny by default, see shared/auth.py) and what each
token's binding must cover (shared/reach.py). Organisations (a region, a trust) outside the
binding are refused with 403; a grant outside it answers 404, as one that does not exist."""

from __future__ import annotations

from shared.auth import Rule

PROPOSE, APPROVE, MANAGE, READ = "funds:propose", "funds:approve", "funds:manage", "funds:read"
_SEES = "the grant's region, or one of its providers"
_ACTS = "acts for the grant's region (national or region-bound)"

POLICY = {
    ("POST", "/v1/grants"): Rule(
        PROPOSE, "acts for the grant's region (national or region-bound)",
        "403 another region; 422 a provider outside the region, unknown codes, amounts that do not add up, dates out of"
        " bounds; 409 the grant_id taken by another proposal"),
    ("GET", "/v1/grants"): Rule(READ, "lists the grants whose region or providers the binding sees", "nothing: others are left out"),
    ("GET", "/v1/grants/{grant_id}"): Rule(READ, _SEES, "404, as for no such grant"),
    ("POST", "/v1/grants/{grant_id}/decision"): Rule(
        APPROVE, _ACTS, "404 outside the binding; 403 the proposer deciding their own proposal; 409 decided the other way"
                        " already, withdrawn, or a milestone already due"),
    ("POST", "/v1/grants/{grant_id}/milestones/{n}/met"): Rule(
        MANAGE, _ACTS, "404 outside the binding; 403 the proposer; 409 the grant or milestone not reserved, or its hold lapsed"),
    ("POST", "/v1/grants/{grant_id}/cancel"): Rule(MANAGE, _ACTS, "404 outside the binding; 409 a refused or completed grant"),
    ("GET", "/v1/grants/{grant_id}/assessment"): Rule(READ, _SEES, "404, as for no such grant"),
    ("GET", "/v1/grants/{grant_id}/assessment.csv"): Rule(READ, _SEES, "404, as for no such grant"),
    ("GET", "/v1/publication/funds/{region_code}/grants"): Rule(
        "reports:read", "the region (national or region-bound tokens)", "403 outside the binding; 404 an unknown region"),
    ("GET", "/v1/funds/{region_code}"): Rule(READ, "the region (national or region-bound)",
                                             "403 outside the binding; 503 while the ledger does not answer"),
    ("GET", "/v1/funds/{region_code}/report"): Rule(READ, "the region (national or region-bound)",
                                                    "403 outside the binding; 503 while the ledger does not answer"),
    ("GET", "/v1/funds/{region_code}/report.csv"): Rule(READ, "the region (national or region-bound)",
                                                        "403 outside the binding; 503 while the ledger does not answer"),
}
