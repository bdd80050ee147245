"""NHS reference data (regions, providers, commissioners) loaded from CSV files.

The package ships a small OGL extract (see README.md here); a deployment points at its own folder.
"""

from __future__ import annotations

import csv
import importlib.resources
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Organisation:
    code: str
    name: str
    region_code: str


@dataclass(frozen=True)
class ReferenceData:
    regions: dict[str, str]
    providers: dict[str, Organisation]
    commissioners: dict[str, Organisation]

    def region_of_provider(self, ods_code: str) -> str | None:
        org = self.providers.get(ods_code)
        return org.region_code if org else None


def _read(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


def load_reference(folder: str | Path | None = None) -> ReferenceData:
    if folder is None:
        root = importlib.resources.files(__package__)
        read = lambda name: (root / name).read_text(encoding="utf-8")  # noqa: E731
    else:
        base = Path(folder)
        read = lambda name: (base / name).read_text(encoding="utf-8")  # noqa: E731
    regions = {r["region_code"]: r["name"] for r in _read(read("regions.csv"))}
    providers = {
        r["ods_code"]: Organisation(r["ods_code"], r["name"], r["region_code"]) for r in _read(read("providers.csv"))
    }
    commissioners = {
        r["icb_code"]: Organisation(r["icb_code"], r["name"], r["region_code"]) for r in _read(read("commissioners.csv"))
    }
    for org in (*providers.values(), *commissioners.values()):
        if org.region_code not in regions:
            raise ValueError(f"{org.code}: unknown region {org.region_code}")
    return ReferenceData(regions, providers, commissioners)
