"""The lifecycle scenario of test_payments_lifecycle.py with the held-account model (the at-risk
part posted to held:<provider>), on this module's own broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_payments_lifecycle import lifecycle

pytestmark = pytest.mark.integration


async def test_every_lifecycle_path_with_a_held_account(
    database: str, second_database: str, kafka_bootstrap: str, tmp_path: Path,
) -> None:
    await lifecycle("held_account", database, second_database, kafka_bootstrap, tmp_path)
