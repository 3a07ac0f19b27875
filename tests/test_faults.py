"""The fault suite (benchmarks/faults.py, `make faults`) at CI's size: every kind of broken input, two
concurrent cache builds, and one pipeline killed at a random moment and resumed."""

import pytest

from benchmarks.faults import report, run_concurrent_cache, run_kills, run_media_faults


def _lost(outcomes):
    return [o for o in outcomes if not o.survived]


@pytest.mark.slow
def test_every_broken_input_gives_a_named_error_or_a_counted_skip(tmp_path):
    outcomes = run_media_faults(tmp_path)
    assert not _lost(outcomes), report(_lost(outcomes))


@pytest.mark.slow
def test_two_concurrent_cache_builds_leave_one_consistent_cache(tmp_path):
    outcomes = run_concurrent_cache(tmp_path)
    assert not _lost(outcomes), report(outcomes)


@pytest.mark.slow
def test_a_pipeline_killed_at_a_random_moment_ends_bit_identical(tmp_path):
    outcomes = run_kills(tmp_path, kills=1, seed=1)
    assert not _lost(outcomes), report(outcomes)
