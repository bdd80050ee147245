"""NHS reference data (regions, providers, their sites, commissioners and who commissions whom)
loaded from CSV files.

The package ships a small OGL extract (see README.md here); a deployment points at its own folder
(``REFERENCE_DIR``). Every input channel checks codes against it: an unknown provider, site,
commissioner or region is refused, never accepted as a new code.
"""

from __future__ import annotations

import csv
import importlib.resources
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_REGION = re.compile(r"^Y[0-9]{2}$")
_TRUST = re.compile(r"^[A-Z0-9]{3}$")
_SITE = re.compile(r"^[A-Z0-9]{5}$")
_ICB = re.compile(r"^Q[A-Z0-9]{2}$")


@dataclass(frozen=True)
class Organisation:
    code: str
    name: str
    region_code: str


@dataclass(frozen=True)
class Site:
    """A trust's site (5-character ODS code); feedback may name a site instead of its trust."""

    code: str
    name: str
    trust_code: str


@dataclass(frozen=True)
class ReferenceData:
    regions: dict[str, str]
    providers: dict[str, Organisation]
    commissioners: dict[str, Organisation]
    # ICB code -> the trusts it holds a contract with (it may pay only these).
    contracts: dict[str, frozenset[str]] = field(default_factory=dict)
    sites: dict[str, Site] = field(default_factory=dict)

    def trust_of(self, ods_code: str) -> str | None:
        """The trust an ODS code names: a known trust itself, or a known site's trust; else None."""
        if ods_code in self.providers:
            return ods_code
        site = self.sites.get(ods_code)
        return site.trust_code if site is not None else None

    def region_of_provider(self, ods_code: str) -> str | None:
        trust = self.trust_of(ods_code)
        return self.providers[trust].region_code if trust is not None else None

    def region_of_commissioner(self, icb_code: str) -> str | None:
        org = self.commissioners.get(icb_code)
        return org.region_code if org is not None else None

    def commissions(self, icb_code: str, ods_code: str) -> bool:
        """True when the ICB holds a contract with the provider (a site counts as its trust)."""
        trust = self.trust_of(ods_code)
        return trust is not None and trust in self.contracts.get(icb_code, frozenset())

    def providers_commissioned_by(self, icb_code: str) -> frozenset[str]:
        return self.contracts.get(icb_code, frozenset())


def _read(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


def _check(pattern: re.Pattern[str], code: str, what: str, file: str) -> str:
    if not pattern.fullmatch(code):
        raise ValueError(f"{file}: {code!r} is not a valid {what} code")
    return code


def load_reference(folder: str | Path | None = None) -> ReferenceData:
    """Load and cross-check the reference files; any inconsistency stops the caller at start-up.

    ``regions.csv``, ``providers.csv``, ``commissioners.csv`` and ``contracts.csv`` are required;
    ``sites.csv`` is optional (without it no site code is accepted).
    """
    read: Callable[[str], str | None]
    if folder is None:
        root = importlib.resources.files(__package__)

        def read(name: str) -> str | None:
            p = root / name
            return p.read_text(encoding="utf-8") if p.is_file() else None
    else:
        base = Path(folder)

        def read(name: str) -> str | None:
            p = base / name
            return p.read_text(encoding="utf-8") if p.is_file() else None

    def required(name: str) -> str:
        text = read(name)
        if text is None:
            raise ValueError(f"reference data: {name} is missing from {folder or 'the shipped extract'}")
        return text

    regions = {_check(_REGION, r["region_code"], "region", "regions.csv"): r["name"] for r in _read(required("regions.csv"))}
    providers = {
        _check(_TRUST, r["ods_code"], "trust", "providers.csv"): Organisation(r["ods_code"], r["name"], r["region_code"])
        for r in _read(required("providers.csv"))
    }
    commissioners = {
        _check(_ICB, r["icb_code"], "ICB", "commissioners.csv"): Organisation(r["icb_code"], r["name"], r["region_code"])
        for r in _read(required("commissioners.csv"))
    }
    for org in (*providers.values(), *commissioners.values()):
        if org.region_code not in regions:
            raise ValueError(f"{org.code}: unknown region {org.region_code}")
    contracts: dict[str, set[str]] = {}
    for r in _read(required("contracts.csv")):
        icb, ods = r["icb_code"], r["ods_code"]
        if icb not in commissioners:
            raise ValueError(f"contracts.csv: {icb} is not in commissioners.csv")
        if ods not in providers:
            raise ValueError(f"contracts.csv: {ods} is not in providers.csv")
        contracts.setdefault(icb, set()).add(ods)
    sites: dict[str, Site] = {}
    for r in _read(read("sites.csv") or ""):
        code = _check(_SITE, r["site_code"], "site", "sites.csv")
        if r["trust_code"] not in providers:
            raise ValueError(f"sites.csv: {code} names an unknown trust {r['trust_code']}")
        sites[code] = Site(code, r["name"], r["trust_code"])
    return ReferenceData(regions, providers, commissioners, {k: frozenset(v) for k, v in contracts.items()}, sites)
