"""Who may call what on the ledger (deny by default, see shared/auth.py) and what each token's
binding must cover (shared/reach.py). The README's threat model prints this table."""

from __future__ import annotations

from shared.auth import Rule

READ, ADMIN, AUDIT = "ledger:read", "ledger:admin", "ledger:audit"
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
}
