"""Who may call what on payments (deny by default, see shared/auth.py) and what each token's
binding must cover (shared/reach.py). The README's threat model prints this table."""

from __future__ import annotations

from shared.auth import Rule

READ = "ledger:read"

POLICY = {
    ("POST", "/v1/payment-requests"): Rule(
        "payments:write", "the commissioner (national, its region, or the ICB itself)",
        "403 another commissioner; 422 a trust the ICB holds no contract with, unknown codes, an implausible activity_date"),
    ("POST", "/v1/payment-requests/batch"): Rule(
        "payments:write", "each item's commissioner", "per item: 403 (forbidden) or 422 (invalid), the others go through"),
    ("GET", "/v1/episodes/{episode_id}"): Rule(READ, "the episode's provider or its commissioner", "404, as for no such episode"),
    ("GET", "/v1/schemes"): Rule(READ, "any", ""),
    ("POST", "/v1/settlements/run"): Rule(
        "schemes:admin", "settles only the providers it acts for (national, their region, the trust)",
        "403 a provider or region outside the binding; 409 a period whose decision window is still open"),
    ("GET", "/v1/settlements/jobs"): Rule(
        "schemes:admin", "lists the jobs it started, and jobs for providers or regions it acts for (national: all)",
        "nothing: others are left out"),
    ("GET", "/v1/settlements/jobs/{job_id}"): Rule(
        "schemes:admin", "a job it started, or one for a provider or region it acts for (national: any)",
        "404, as for no such job"),
    ("POST", "/v1/settlements/jobs/{job_id}/cancel"): Rule(
        "schemes:admin", "as for reading the job", "404 outside the binding; 409 once the job has moved money"),
    ("GET", "/v1/settlements"): Rule(READ, "lists the providers the binding sees", "nothing: others are left out"),
    ("POST", "/v1/episodes/{episode_id}/appeal"): Rule(
        "appeals:write", "acts for the episode's provider (the trust itself, its region, or national)", "404 another trust's episode"),
    ("POST", "/v1/episodes/{episode_id}/appeal/decision"): Rule(
        "appeals:decide", "acts for the episode's provider", "404 outside the binding; 403 the appellant deciding their own appeal"),
    ("POST", "/v1/episodes/{episode_id}/appeal/review-request"): Rule(
        "appeals:write", "acts for the episode's provider (the appellant's side)",
        "404 outside the binding; 409 an appeal not rejected, a review already asked for, or too late"),
    ("POST", "/v1/episodes/{episode_id}/appeal/review"): Rule(
        "appeals:review", "acts for the episode's provider",
        "404 outside the binding; 403 the appellant, the first-level decider or the requester; 409 no review asked for,"
        " or decided the other way"),
    ("GET", "/v1/episodes/{episode_id}/appeal"): Rule(READ, "the episode's provider", "404 outside the binding"),
    ("GET", "/v1/appeals"): Rule(READ, "lists the providers the binding sees", "nothing: others are left out"),
    # Exemptions: a scope of their own, not schemes:admin. Exempting is a judgement about one
    # provider's circumstances that switches its diversions off; running settlements is an
    # operational duty. Keeping them apart means whoever runs the month cannot also waive it.
    ("POST", "/v1/exemptions"): Rule(
        "payments:exempt", "acts for the provider as its region or national (not the trust itself)",
        "403 a provider outside the binding or a trust-bound token; 409 a provider-period already settled or exempted"
        " otherwise; 422 an unknown provider, a bad period or reason"),
    ("GET", "/v1/exemptions"): Rule(READ, "lists the providers the binding sees", "nothing: others are left out"),
    # Statements: provisional, then final (scheme option [review]).
    ("GET", "/v1/statements"): Rule(READ, "lists the providers the binding sees", "nothing: others are left out"),
    ("GET", "/v1/statements/{statement_id}"): Rule(READ, "the statement's provider", "404 outside the binding"),
    ("POST", "/v1/statements/{statement_id}/queries"): Rule(
        "appeals:write", "acts for the statement's provider (the trust itself, its region, or national)",
        "404 outside the binding; 409 a final statement or a closed window; 422 an episode not on the statement"),
    ("POST", "/v1/statements/{statement_id}/corrections"): Rule(
        "schemes:admin", "acts for the statement's provider as its region or national (not the trust itself)",
        "404 outside the binding; 403 a trust-bound token; 409 final, window closed, accepted, or the episode corrected"
        " otherwise; 422 an episode not on the statement"),
    ("POST", "/v1/statements/{statement_id}/accept"): Rule(
        "appeals:write", "acts for the statement's provider", "404 outside the binding; 409 a final statement"),
    ("POST", "/v1/statements/finalise-due"): Rule(
        "schemes:admin", "finalises only the providers it acts for (national, their region, the trust)",
        "nothing: others are left for their own finalisation"),
    ("GET", "/v1/providers/{provider_code}/periods/{period}"): Rule(READ, "the provider", "403 outside the binding"),
    ("GET", "/v1/funds/{region_code}/periods/{period}"): Rule(READ, "the region (national or region-bound tokens)",
                                                            "403 outside the binding"),
    ("GET", "/v1/ledger-discrepancies"): Rule(READ, "lists the providers the binding sees", "nothing: others are left out"),
    # Read models (read_api.py). Public aggregates for the portal's public pages:
    ("GET", "/v1/publication/eligible-episodes"): Rule(
        "reports:read", "lists the providers the binding sees", "nothing: others are left out"),
    ("GET", "/v1/publication/providers/{provider_code}/money"): Rule(
        "reports:read", "the provider", "403 outside the binding; 404 an unknown provider"),
    ("GET", "/v1/publication/equity"): Rule(
        "reports:read", "England: a national token; region_code: that region (national or region-bound tokens)",
        "403 outside the binding (England needs a national token); 404 an unknown region; strata under 10 episodes"
        " show their count only"),
    ("GET", "/v1/publication/funds/{region_code}/inflows"): Rule(
        "reports:read", "the region (national or region-bound tokens)", "403 outside the binding; 404 an unknown region"),
    # ... and finance data, read with the user's own token:
    ("GET", "/v1/providers/{provider_code}/settlements"): Rule(READ, "the provider", "403 outside the binding"),
    ("GET", "/v1/settlements/{settlement_id}/episodes"): Rule(READ, "the settlement's provider", "404 outside the binding"),
    ("GET", "/v1/settlements/{settlement_id}/episodes.csv"): Rule(READ, "the settlement's provider", "404 outside the binding"),
    ("GET", "/v1/commissioners/{commissioner_code}/periods/{period}/providers"): Rule(
        READ, "the commissioner (national, its region, or the ICB itself)", "403 outside the binding; 404 an unknown ICB"),
}
