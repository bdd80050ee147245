"""Scheme scope codes are checked against reference data at load; errors name the file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.payments.schemes import SchemeError, load_schemes, parse_scheme
from shared.reference import load_reference

REF = load_reference()
BASE = 'scheme_id = "scoped"\nversion = 1\ntitle = "Scoped"\neffective_from = 2026-04-01\n'


@pytest.mark.parametrize(
    ("scope", "field"),
    [
        ('regions = ["Y99"]', "scope.regions.0: Y99 is not in the reference data"),
        ('commissioners = ["QWE", "QZZ"]', "scope.commissioners.1: QZZ is not in the reference data"),
        ('providers = ["ZZZ"]', "scope.providers.0: ZZZ is not in the reference data"),
    ],
)
def test_unknown_scope_code_names_file_and_field(tmp_path: Path, scope: str, field: str) -> None:
    (tmp_path / "scoped.toml").write_text(BASE + f"[scope]\n{scope}\n", encoding="utf-8")
    with pytest.raises(SchemeError) as info:
        load_schemes(tmp_path, REF)
    assert str(info.value).startswith("scoped.toml: ") and field in str(info.value)
    load_schemes(tmp_path)  # without reference data only the shape is checked


@pytest.mark.parametrize(
    ("scope", "field"),
    [
        ('service_types = ["surgery"]', "scope.service_types.0"),
        ('regions = ["London"]', "scope.regions.0"),
        ('commissioners = ["RJ1"]', "scope.commissioners.0"),
        ('providers = ["rj1"]', "scope.providers.0"),
    ],
)
def test_badly_shaped_scope_code_is_named(scope: str, field: str) -> None:
    with pytest.raises(SchemeError, match=rf"^x\.toml: {field}"):
        parse_scheme(BASE + f"[scope]\n{scope}\n", "x.toml")


def test_known_scope_loads(tmp_path: Path) -> None:
    (tmp_path / "ok.toml").write_text(
        BASE + '[scope]\nregions = ["Y56"]\ncommissioners = ["QWE"]\nproviders = ["RJ1"]\nservice_types = ["maternity"]\n',
        encoding="utf-8")
    book = load_schemes(tmp_path, REF)
    assert book.schemes[0].scope.providers == ("RJ1",)


def test_duplicate_version_names_both_files(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(BASE, encoding="utf-8")
    (tmp_path / "b.toml").write_text(BASE.replace("Scoped", "Copy"), encoding="utf-8")
    with pytest.raises(SchemeError, match=r"^b\.toml: scoped@1 is defined twice \(also in a\.toml\)"):
        load_schemes(tmp_path)


def test_shipped_and_test_schemes_pass_the_reference_check() -> None:
    root = Path(__file__).resolve().parents[2]
    assert load_schemes(root / "services" / "payments" / "schemes", REF).schemes
    assert load_schemes(root / "tests" / "e2e" / "schemes", REF).schemes
