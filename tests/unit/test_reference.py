"""Unit tests for shared/reference (NHS organisation reference data)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import shared.reference as reference_pkg
from services.payments.domain import fund_account
from shared.contracts import Leg
from shared.reference import Organisation, ReferenceData, load_reference

SHIPPED = Path(reference_pkg.__file__).parent


@pytest.fixture(scope="module")
def ref() -> ReferenceData:
    return load_reference()


def test_default_extract_sizes(ref: ReferenceData) -> None:
    assert len(ref.regions) == 7
    assert len(ref.providers) == 10
    assert len(ref.commissioners) == 10


def test_regions(ref: ReferenceData) -> None:
    assert ref.regions["Y56"] == "London"
    assert set(ref.regions) == {"Y56", "Y58", "Y59", "Y60", "Y61", "Y62", "Y63"}
    assert all(re.fullmatch(r"Y[0-9]{2}", code) for code in ref.regions)


def test_providers(ref: ReferenceData) -> None:
    assert ref.providers["RJ1"] == Organisation("RJ1", "Guy's and St Thomas' NHS Foundation Trust", "Y56")
    assert all(re.fullmatch(r"[A-Z0-9]{3}([A-Z0-9]{2})?", code) for code in ref.providers)
    assert all(org.code == code for code, org in ref.providers.items())


def test_commissioners_and_quoted_names(ref: ReferenceData) -> None:
    assert all(re.fullmatch(r"Q[A-Z0-9]{2}", code) for code in ref.commissioners)
    qu9 = ref.commissioners["QU9"]
    assert qu9.name == "NHS Buckinghamshire, Oxfordshire and Berkshire West Integrated Care Board"
    assert qu9.region_code == "Y59"


def test_every_organisation_has_a_known_region(ref: ReferenceData) -> None:
    for org in (*ref.providers.values(), *ref.commissioners.values()):
        assert org.region_code in ref.regions


def test_region_of_provider(ref: ReferenceData) -> None:
    assert ref.region_of_provider("RJ1") == "Y56"
    assert ref.region_of_provider("RTD") == "Y63"
    assert ref.region_of_provider("ZZZ") is None
    assert ref.region_of_provider("QWE") is None  # a commissioner, not a provider


def test_every_region_fund_is_a_valid_ledger_account(ref: ReferenceData) -> None:
    for code in ref.regions:
        assert Leg(account_id=fund_account(code), amount_pence=1).account_id == f"fund:{code}"


def test_load_from_a_folder(tmp_path: Path) -> None:
    for name in ("regions.csv", "providers.csv", "commissioners.csv", "contracts.csv"):
        shutil.copy(SHIPPED / name, tmp_path / name)
    with (tmp_path / "providers.csv").open("a", encoding="utf-8") as f:
        f.write("RXX,Test Trust,Y58\n")
    ref = load_reference(tmp_path)
    assert ref.region_of_provider("RXX") == "Y58"
    assert len(ref.providers) == 11
    assert load_reference(str(tmp_path)).providers == ref.providers


def test_unknown_region_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "regions.csv").write_text("region_code,name\nY56,London\n", encoding="utf-8")
    (tmp_path / "providers.csv").write_text("ods_code,name,region_code\nRJ1,Guy's,Y56\nRTH,Oxford,Y59\n", encoding="utf-8")
    (tmp_path / "commissioners.csv").write_text("icb_code,name,region_code\nQWE,SEL,Y56\n", encoding="utf-8")
    with pytest.raises(ValueError, match="RTH: unknown region Y59"):
        load_reference(tmp_path)


def test_unknown_commissioner_region_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "regions.csv").write_text("region_code,name\nY56,London\n", encoding="utf-8")
    (tmp_path / "providers.csv").write_text("ods_code,name,region_code\n", encoding="utf-8")
    (tmp_path / "commissioners.csv").write_text("icb_code,name,region_code\nQWE,SEL,Y99\n", encoding="utf-8")
    with pytest.raises(ValueError, match="QWE: unknown region Y99"):
        load_reference(tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    (tmp_path / "regions.csv").write_text("region_code,name\nY56,London\n", encoding="utf-8")
    with pytest.raises(ValueError, match="providers.csv is missing"):
        load_reference(tmp_path)


def test_a_deployment_folder_without_contracts_does_not_load(tmp_path: Path) -> None:
    """Fail closed: without contracts no payment could be checked, so the service must not start."""
    for name in ("regions.csv", "providers.csv", "commissioners.csv"):
        shutil.copy(SHIPPED / name, tmp_path / name)
    with pytest.raises(ValueError, match="contracts.csv is missing"):
        load_reference(tmp_path)


def test_empty_files_give_empty_reference(tmp_path: Path) -> None:
    (tmp_path / "regions.csv").write_text("region_code,name\n", encoding="utf-8")
    (tmp_path / "providers.csv").write_text("ods_code,name,region_code\n", encoding="utf-8")
    (tmp_path / "commissioners.csv").write_text("icb_code,name,region_code\n", encoding="utf-8")
    (tmp_path / "contracts.csv").write_text("icb_code,ods_code\n", encoding="utf-8")
    ref = load_reference(tmp_path)
    assert (ref.regions, ref.providers, ref.commissioners, ref.contracts, ref.sites) == ({}, {}, {}, {}, {})


def test_contracts_say_who_pays_whom(ref: ReferenceData) -> None:
    assert ref.commissions("QWE", "RJ1")
    assert not ref.commissions("QWE", "RTD")  # a London ICB has no contract with Newcastle
    assert ref.commissions("QHM", "RJ1")  # an out-of-area specialist contract
    assert ref.commissions("QWE", "RJ121")  # a site counts as its trust
    assert not ref.commissions("QZZ", "RJ1")
    for icb, trusts in ref.contracts.items():
        assert icb in ref.commissioners and trusts <= set(ref.providers)


def test_sites_belong_to_their_trust(ref: ReferenceData) -> None:
    assert ref.trust_of("RJ121") == "RJ1"
    assert ref.region_of_provider("RJ121") == "Y56"
    assert ref.trust_of("RJ1") == "RJ1"
    assert ref.trust_of("RJ1ZZ") is None  # a site code nobody listed is unknown, not guessed from its prefix


def test_contracts_naming_unknown_organisations_are_refused(tmp_path: Path) -> None:
    for name in ("regions.csv", "providers.csv", "commissioners.csv"):
        shutil.copy(SHIPPED / name, tmp_path / name)
    (tmp_path / "contracts.csv").write_text("icb_code,ods_code\nQWE,ZZZ\n", encoding="utf-8")
    with pytest.raises(ValueError, match="ZZZ is not in providers.csv"):
        load_reference(tmp_path)
