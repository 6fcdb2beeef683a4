"""The short soak (tests/soak.py): every kind of client at once for about 35 seconds against the
real server process with the reference model, then a quiet check.

It needs the whole of issue 8 merged: stray tokens (item 1), option bounds (item 2), slot release
for clients that stop reading (item 3), body limits (item 6) and hostile JSON (item 7); on a
branch without one of those it fails, and the report it prints says which.
"""

from __future__ import annotations

import pytest
import trio
from soak import SoakConfig, run_soak

pytestmark = [pytest.mark.reference, pytest.mark.slow]


async def test_a_short_soak_leaves_no_5xx_no_busy_slot_and_no_stray_token(reference_gguf):
    with trio.fail_after(600):
        report = await run_soak(SoakConfig(duration=35, quiet=5))
    print(report.text())
    assert report.server_exit is None, report.text()
    assert report.count_5xx == 0, report.text()
    assert report.slots_leaked == 0 and not report.slots_busy_gauge, report.text()
    assert report.stray_checks > 0 and report.stray_tokens == 0, report.text()
