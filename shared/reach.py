"""What a token's binding reaches, given the reference data: the one place the binding model is
spelled out, for reads and writes alike (README "Threat model" has the table per route).

- national: every organisation and account;
- regions: every trust, site, ICB and fund of those regions;
- icbs: the ICB itself and the trusts it holds a contract with (for reading their figures);
- ods: those trusts, their sites and their held accounts.

Writes ask for the narrower verbs: a commissioner's payment needs ``pays_for`` (national, the
ICB's region or the ICB itself: a trust's token never pays), a provider's action needs
``acts_for_provider`` (national, its region or the trust itself: an ICB does not appeal for a
trust), a region's action needs ``acts_for_region``.

Refusals name the field and the binding. Organisations are public reference data, so a request
naming one outside the binding is refused with 403; a *record* (episode, appeal, transfer) outside
it answers 404, exactly as one that does not exist, so ids are not confirmed to strangers.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.auth import Binding, Principal
from shared.http import Problem
from shared.reference import ReferenceData


@dataclass(frozen=True)
class Reach:
    binding: Binding
    ref: ReferenceData

    # -- reads ----------------------------------------------------------------------------------
    def sees_region(self, region_code: str | None) -> bool:
        return self.binding.national or (region_code is not None and region_code in self.binding.regions)

    def sees_provider(self, ods_code: str | None) -> bool:
        if self.binding.national:
            return True
        if ods_code is None:
            return False
        trust = self.ref.trust_of(ods_code)
        if trust is None:
            return False
        b = self.binding
        return (trust in b.providers or self.ref.providers[trust].region_code in b.regions
                or any(self.ref.commissions(icb, trust) for icb in b.icbs))

    def sees_commissioner(self, icb_code: str | None) -> bool:
        if self.binding.national:
            return True
        if icb_code is None or icb_code not in self.ref.commissioners:
            return False
        return icb_code in self.binding.icbs or self.ref.commissioners[icb_code].region_code in self.binding.regions

    def sees_account(self, account_id: str) -> bool:
        kind, _, code = account_id.partition(":")
        if kind == "fund":
            return self.sees_region(code) and code in self.ref.regions
        if kind in ("provider", "held"):
            return self.sees_provider(code)
        if kind == "commissioner":
            return self.sees_commissioner(code)
        return False

    def accounts(self) -> list[str] | None:
        """Every ledger account the binding sees, for filtering a search (None: national, all)."""
        if self.binding.national:
            return None
        ref = self.ref
        out = [f"fund:{r}" for r in ref.regions if self.sees_region(r)]
        out += [f"commissioner:{c}" for c in ref.commissioners if self.sees_commissioner(c)]
        for trust in ref.providers:
            if self.sees_provider(trust):
                out += [f"provider:{trust}", f"held:{trust}"]
        return sorted(out)

    def providers(self) -> list[str] | None:
        """Every trust and site the binding sees (None: national, all)."""
        if self.binding.national:
            return None
        ref = self.ref
        return sorted([t for t in ref.providers if self.sees_provider(t)]
                      + [code for code, site in ref.sites.items() if self.sees_provider(site.trust_code)])

    # -- writes ---------------------------------------------------------------------------------
    def pays_for(self, icb_code: str) -> bool:
        """May send payments on behalf of this commissioner."""
        return self.sees_commissioner(icb_code)

    def acts_for_provider(self, ods_code: str) -> bool:
        """May act for this trust (appeal, decide, settle, submit its feedback): not through an ICB."""
        if self.binding.national:
            return True
        trust = self.ref.trust_of(ods_code)
        return trust is not None and (trust in self.binding.providers
                                      or self.ref.providers[trust].region_code in self.binding.regions)

    def acts_for_region(self, region_code: str) -> bool:
        return self.sees_region(region_code)

    def moves_account(self, account_id: str) -> bool:
        """May post to this ledger account (manual transfers, account metadata)."""
        kind, _, code = account_id.partition(":")
        if kind in ("provider", "held"):
            return self.acts_for_provider(code)
        return self.sees_account(account_id)

    @property
    def national(self) -> bool:
        return self.binding.national

    # -- refusals -------------------------------------------------------------------------------
    def refuse(self, field: str, what: str) -> Problem:
        """403 for an organisation outside the binding, naming the field."""
        message = f"{what} is outside this token's binding ({self.binding.describe()})"
        return Problem(403, "Forbidden", message, errors=[{"field": field, "message": message}])

    def require(self, allowed: bool, field: str, what: str) -> None:
        if not allowed:
            raise self.refuse(field, what)


def reach_of(principal: Principal, ref: ReferenceData) -> Reach:
    return Reach(principal.binding, ref)


def not_found(what: str) -> Problem:
    """The answer for a record this token cannot see: the same as for one that does not exist."""
    return Problem(404, "Not found", f"no {what}")


def region_accounts(ref: ReferenceData, region_code: str) -> tuple[list[str], list[str]]:
    """(the region's ledger accounts, its trusts and sites): what "in the region" means for a search."""
    reach = Reach(Binding(regions=frozenset({region_code})), ref)
    return reach.accounts() or [], reach.providers() or []


def provider_accounts(ref: ReferenceData, ods_code: str) -> tuple[list[str], list[str]]:
    """(the trust's ledger accounts, the trust and its sites) for an ODS code of a trust or a site."""
    trust = ref.trust_of(ods_code)
    if trust is None:
        return [], [ods_code]
    return [f"provider:{trust}", f"held:{trust}"], sorted([trust] + [c for c, s in ref.sites.items() if s.trust_code == trust])
