"""Tests marked `claim` back a claim of the README (fault tolerance, S3, the two-node cluster, the killed
sweep driver, ASHA). With AEMG_REQUIRE_CLAIMS=1 (set by `make test`, which CI runs) such a test that skips
fails instead, so a green run never hides a claim that went untested. `real_data` tests still skip when
the data is absent. The hook is imported by conftest.py."""

from __future__ import annotations

import os

import pytest

REQUIRE_CLAIMS = "AEMG_REQUIRE_CLAIMS"


def claims_required() -> bool:
    return os.environ.get(REQUIRE_CLAIMS, "") not in ("", "0")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    claim = item.get_closest_marker("claim")
    if report.skipped and claim and not hasattr(report, "wasxfail") and not item.get_closest_marker("real_data") \
            and claims_required():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        what = f" ({claim.args[0]})" if claim.args else ""
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} backs a claim of the README{what} and was skipped: {reason}\n"
            f"{REQUIRE_CLAIMS}=1 (set by `make test` and CI) fails the run when a claim goes untested. Run it where "
            f"it can run, or leave it out knowingly: `make test-fast`, or `make test {REQUIRE_CLAIMS}=0`.")
    return report
