"""The lifecycle scenario of test_payments_lifecycle.py with the held-account model (the at-risk
part posted to held:<provider>), on this module's own broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_payments_lifecycle import ledger_database, lifecycle  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration


async def test_every_lifecycle_path_with_a_held_account(
    database: str, ledger_database: str, kafka_bootstrap: str, tmp_path: Path,  # noqa: F811
) -> None:
    await lifecycle("held_account", database, ledger_database, kafka_bootstrap, tmp_path)
