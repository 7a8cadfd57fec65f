"""Helpers shared by the explorer server's tests."""

from __future__ import annotations

import time
from typing import Any


def wait_job(c: Any, job: str, timeout: float = 60.0) -> dict:
    """Poll ``GET /api/jobs/{job}`` on the test client ``c`` until the job is done, failed or cancelled."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        j = c.get(f"/api/jobs/{job}").json()
        if j["status"] in ("done", "failed", "cancelled"):
            return j
        time.sleep(0.02)
    raise AssertionError(f"job {job} did not finish in {timeout:.0f} s")
