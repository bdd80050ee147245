"""The privacy scan's matcher: NHS numbers anywhere in a blob (a table row as text, a Kafka record's
key, value and headers, a log file).

Two nets: every number that was submitted (or planted in free text and correlation ids), however
spaced, wherever it sits; and any NHS-number-shaped value of the synthetic 999 range with a valid
check digit standing on its own (the test data uses only that range, so a number nobody planted
shows up too). The second net needs non-alphanumeric neighbours: hex hashes are full of digit runs.
"""

from __future__ import annotations

import re

from shared.tracing import nhs_check_digit_ok

_DIGIT_RUN = re.compile(rb"(?<![0-9])[0-9](?:[ -]?[0-9]){9}(?![0-9])")
_STANDALONE_999 = re.compile(rb"(?<![0-9A-Za-z])999[ -]?[0-9]{3}[ -]?[0-9]{4}(?![0-9A-Za-z])")


def nhs_hits(blob: bytes, known: set[bytes]) -> int:
    hits = {m.start() for m in _DIGIT_RUN.finditer(blob) if re.sub(rb"[ -]", b"", m.group()) in known}
    for m in _STANDALONE_999.finditer(blob):
        if nhs_check_digit_ok(re.sub(rb"[ -]", b"", m.group()).decode()):
            hits.add(m.start())
    return len(hits)
