"""The feedback service's read models: the FFT counts and PROM pairs the reports are computed from
(``domain.fft_report``, ``domain.prom_report``). Reads only; the write path is ``handlers.py``."""

from __future__ import annotations

import asyncpg

from shared.contracts import FftAnswer
from shared.periods import period_utc_bounds


async def fft_counts(conn: asyncpg.Connection, period: str) -> dict[str, dict[FftAnswer, int]]:
    """Per provider, the number of each FFT answer authored in the month (UTC).

    Only each patient's first FFT answer per episode counts (the first received; later FFT answers
    are amendments), whatever else the patient answered (a patient power answer does not make
    the FFT answer an amendment). Every provider that has ever had an FFT answer appears, with
    zeros if it had none this month.
    """
    start, end = period_utc_bounds(period)
    rows = await conn.fetch(
        "WITH firsts AS ("
        "  SELECT DISTINCT ON (episode_id, patient_pseudonym) provider_code, authored_at, (answers->>'fft_answer')::int AS a"
        "  FROM submissions WHERE instrument = 'fft' ORDER BY episode_id, patient_pseudonym, received_at, submission_id)"
        " SELECT provider_code, a, count(*) AS n FROM firsts WHERE authored_at >= $1 AND authored_at < $2"
        " GROUP BY provider_code, a",
        start, end,
    )
    providers = await conn.fetch("SELECT DISTINCT provider_code FROM submissions WHERE instrument = 'fft'")
    out: dict[str, dict[FftAnswer, int]] = {r["provider_code"]: {} for r in providers}
    for r in rows:
        out[r["provider_code"]][FftAnswer(r["a"])] = r["n"]
    return out


async def prom_pairs(conn: asyncpg.Connection, procedure: str | None) -> list[tuple]:
    """(provider, instrument, procedure, pre score, post score, pre profile, post profile) of every
    stored pair, optionally of one procedure (profiles: EQ-5D-5L only)."""
    rows = await conn.fetch(
        "SELECT provider_code, instrument, procedure, pre_score, post_score, pre_profile, post_profile FROM prom_pairs"
        " WHERE $1::text IS NULL OR procedure = $1",
        procedure,
    )
    return [(r["provider_code"], r["instrument"], r["procedure"], r["pre_score"], r["post_score"], r["pre_profile"],
             r["post_profile"]) for r in rows]
