"""The `claim` hook (tests/claims.py, wired in conftest.py): with AEMG_REQUIRE_CLAIMS=1 a claim test that skips
(in its body, by skipif, or in a fixture) fails the run; other tests and `real_data` tests still skip; without
the variable claims skip as usual. Runs pytest in-process on a few small tests with the suite's own conftest
and markers."""

import tomllib
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SMALL_TESTS = '''
import pytest

@pytest.fixture
def port_taken():
    pytest.skip("port 52365 is in use")

@pytest.mark.claim("the cluster works")
def test_claim_skipped_in_its_body():
    pytest.skip("needs root and unshare")

@pytest.mark.claim
@pytest.mark.skipif(True, reason="needs root and unshare")
def test_claim_skipped_by_skipif():
    pass

@pytest.mark.claim
def test_claim_skipped_by_a_fixture(port_taken):
    pass

@pytest.mark.claim
def test_claim_that_runs():
    pass

@pytest.mark.claim
@pytest.mark.real_data
def test_claim_on_real_data(data_root):
    pass

def test_other_skipped():
    pytest.skip("not a claim")
'''


@pytest.fixture
def small_suite(pytester, monkeypatch):
    options = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    pytester.makeini("[pytest]\naddopts = {}\nmarkers =\n{}\n".format(
        options["addopts"], "\n".join(f"    {m}" for m in options["markers"])))
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(test_small=SMALL_TESTS)
    monkeypatch.setenv("AEMG_DATA", str(pytester.path / "no-data"))
    return pytester


def test_a_skipped_claim_fails_when_claims_are_required(small_suite, monkeypatch):
    monkeypatch.setenv("AEMG_REQUIRE_CLAIMS", "1")
    result = small_suite.runpytest()
    # the body's skip fails the test; a skip while setting it up (skipif, a fixture) is an error
    result.assert_outcomes(passed=1, failed=1, errors=2, skipped=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*test_claim_skipped_in_its_body backs a claim of the README (the cluster works) "
                                 "and was skipped: needs root and unshare",
                                 "*AEMG_REQUIRE_CLAIMS=1*make test-fast*"])
    result.stdout.fnmatch_lines(["*test_claim_skipped_by_a_fixture backs a claim*port 52365 is in use"])
    result.stdout.fnmatch_lines(["SKIPPED*real data not found*", "SKIPPED*not a claim"])


@pytest.mark.parametrize("value", [None, "0"])
def test_claims_skip_as_usual_otherwise(small_suite, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("AEMG_REQUIRE_CLAIMS", raising=False)
    else:
        monkeypatch.setenv("AEMG_REQUIRE_CLAIMS", value)
    result = small_suite.runpytest()
    result.assert_outcomes(passed=1, skipped=5)
    assert result.ret == pytest.ExitCode.OK
