"""Who may call what on the ledger (deny by default, see shared/auth.py) and what each token's
binding must cover (shared/reach.py). The README's threat model prints this table."""

from __future__ import annotations

from shared.auth import Rule

READ, ADMIN, AUDIT = "ledger:read", "ledger:admin", "ledger:audit"
CLOSE, RECONCILE = "ledger:close", "ledger:reconcile"
_ACCOUNT = "the account's organisation (fund: its region; provider/held: the trust; commissioner: the ICB)"

POLICY = {
    ("GET", "/v1/accounts"): Rule(READ, "lists only the accounts the binding sees", "nothing: others are left out of the page"),
    ("PUT", "/v1/accounts/{account_id}"): Rule(ADMIN, "may move the account: " + _ACCOUNT,
                                               "403 outside the binding; 422 an organisation the reference data lacks"),
    ("GET", "/v1/accounts/{account_id}/balance"): Rule(READ, _ACCOUNT, "403 outside the binding"),
    ("GET", "/v1/accounts/{account_id}/statement"): Rule(READ, _ACCOUNT, "403 outside the binding"),
    ("GET", "/v1/accounts/{account_id}/statement.csv"): Rule(READ, _ACCOUNT, "403 outside the binding"),
    ("GET", "/v1/trial-balance"): Rule(READ, "national (it covers every region)", "403 for a bound token"),
    ("GET", "/v1/trial-balance.csv"): Rule(READ, "national (it covers every region)", "403 for a bound token"),
    ("GET", "/v1/transfers/{transfer_id}"): Rule(READ, "at least one of the transfer's accounts", "404, as for no such transfer"),
    ("POST", "/v1/transfers"): Rule(
        ADMIN, "every account of the transfer (and of the pending transfer it posts or voids)",
        "403 an account outside the binding or an id outside the manual: namespace (payments' and funds' transfers);"
        " 422 an unknown organisation or a manual hold without timeout_s"),
    ("GET", "/v1/verify"): Rule(AUDIT, "national", "403 for a bound token; 409 while another verification runs"),
    # Month-end (finance_api.py)
    ("GET", "/v1/transfers"): Rule(READ, "lists only transfers moving an account the binding sees; provider and region"
                                   " filters inside the binding", "403 a provider or region filter outside the binding"),
    ("GET", "/v1/periods"): Rule(READ, "any (period status is not regional)", "nothing"),
    ("GET", "/v1/periods/{period}"): Rule(READ, "any (period status is not regional)", "nothing"),
    ("POST", "/v1/periods/{period}/close"): Rule(CLOSE, "national (a close covers every region)",
                                                 "403 for a bound token; 409 not ended, out of order or already closing"),
    ("GET", "/v1/periods/{period}/statement"): Rule(READ, "national (a statement covers every account)", "403 for a bound token"),
    ("GET", "/v1/periods/{period}/statement.sig"): Rule(READ, "national (a statement covers every account)", "403 for a bound token"),
    ("GET", "/v1/statement-key"): Rule(READ, "any (a public key)", "nothing"),
    ("POST", "/v1/remittances"): Rule(RECONCILE, "the commissioner (national, its region or the ICB)",
                                      "403 outside the binding; 422 an unknown ICB or a malformed file"),
    ("GET", "/v1/remittances"): Rule(RECONCILE, "lists only runs of commissioners the binding sees", "403 a commissioner filter outside it"),
    ("GET", "/v1/remittances/{run_id}"): Rule(RECONCILE, "the run's commissioner", "404, as for no such run"),
    ("GET", "/v1/remittances/{run_id}/lines"): Rule(RECONCILE, "the run's commissioner", "404, as for no such run"),
    ("GET", "/v1/remittances/{run_id}/exceptions.csv"): Rule(RECONCILE, "the run's commissioner", "404, as for no such run"),
    # Read models (read_api.py): a fund's balance for the portal's public region page, any account's for finance.
    ("GET", "/v1/publication/funds/{region_code}/balance-history"): Rule(
        "reports:read", "the region (national or region-bound tokens)", "403 outside the binding; 404 an unknown region"),
    ("GET", "/v1/accounts/{account_id}/balance-history"): Rule(READ, _ACCOUNT, "403 outside the binding"),
}
