"""Who may call what: the scope each payments route needs (deny by default, see shared/auth.py)."""

POLICY = {
    ("POST", "/v1/payment-requests"): "payments:write",
    ("POST", "/v1/payment-requests/batch"): "payments:write",
    ("GET", "/v1/episodes/{episode_id}"): "ledger:read",
    ("GET", "/v1/schemes"): "ledger:read",
    ("POST", "/v1/settlements/run"): "schemes:admin",
    ("GET", "/v1/settlements"): "ledger:read",
    ("POST", "/v1/episodes/{episode_id}/appeal"): "appeals:write",
    ("POST", "/v1/episodes/{episode_id}/appeal/decision"): "appeals:decide",
    ("GET", "/v1/episodes/{episode_id}/appeal"): "ledger:read",
    ("GET", "/v1/appeals"): "ledger:read",
    ("GET", "/v1/providers/{provider_code}/periods/{period}"): "ledger:read",
    ("GET", "/v1/funds/{region_code}/periods/{period}"): "ledger:read",
}
