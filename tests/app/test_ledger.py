"""The job ledger contract, run against every implementation its factory knows (LEDGERS)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.jobs.ledger import LEDGERS, JobItem, JobLedger, open_ledger


@pytest.fixture(params=LEDGERS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobLedger]:
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    opened = open_ledger(tmp_path, url)
    try:
        yield opened
    finally:
        if url is not None:  # the cluster lives for the session: each test starts empty
            _empty_postgres_ledger(url)
        opened.close()


def _empty_postgres_ledger(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE xmr_jobs.jobs, xmr_jobs.job_items")


def items(count: int) -> list[JobItem]:
    return [
        JobItem(position=n, item_id=f"i{n}", kind="text", text=f"t{n}", metadata={"n": n})
        for n in range(count)
    ]


def test_a_batch_counts_its_items_and_pages_what_is_pending(ledger: JobLedger) -> None:
    ledger.create("j", items(5), "docs", "batch", {"dedup_threshold": 0.9})
    assert [i.position for i in ledger.pending("j", 2)] == [0, 1]
    assert ledger.pending("j", 10, after_position=3)[0].metadata == {"n": 4}
    ledger.record_results("j", [0, 1], {2: "bad image"}, {1: ("other", 0.97)})
    view = ledger.get("j")
    assert view is not None
    assert (view.total, view.done, view.failed, view.status) == (5, 2, 1, "queued")
    assert (view.collection, view.kind, view.params) == ("docs", "batch", {"dedup_threshold": 0.9})
    assert [(e.position, e.id, e.error) for e in view.errors] == [(2, "i2", "bad image")]
    assert [(d.position, d.duplicate_of, d.score) for d in view.duplicates] == [(1, "other", 0.97)]
    assert [i.position for i in ledger.pending("j", 10)] == [3, 4]


def test_jobs_without_items_keep_their_counts_cursor_and_result(ledger: JobLedger) -> None:
    ledger.create("t", [], "default", "classify", {"labels": ["cat"]})
    ledger.set_status("t", "running")
    ledger.set_cursor("t", 41, total=10, done=4)
    ledger.set_result("t", {"groups": []})
    ledger.set_waiting("t", "a model slot")
    view = ledger.get("t")
    assert view is not None
    assert (view.cursor, view.total, view.done, view.result) == (41, 10, 4, {"groups": []})
    assert view.waiting_for == "a model slot"
    ledger.set_status("t", "done")
    finished = ledger.get("t")
    assert finished is not None and finished.waiting_for is None  # only while it runs
    assert ledger.get("missing") is None


def test_a_restart_interrupts_the_queued_jobs_but_not_reembeddings(ledger: JobLedger) -> None:
    ledger.create("b", items(1), "docs")
    ledger.create("r", [], "docs", "reindex")
    ledger.set_status("r", "running")
    ledger.create("d", [], "docs", "duplicates")
    ledger.set_status("d", "done")
    if ledger.shared:  # other processes may be running them: their leases tell
        assert ledger.interrupt_unfinished() == []
        assert ledger.get("b").status == "queued"  # type: ignore[union-attr]
        return
    assert ledger.interrupt_unfinished() == ["b"]
    assert [v.status for v in map(ledger.get, ["b", "r", "d"]) if v] == [
        "interrupted",
        "running",
        "done",
    ]
    assert sorted(ledger.jobs_of("docs", ("running", "done"))) == ["d", "r"]


def test_queued_jobs_are_claimed_once_in_the_order_they_were_queued(ledger: JobLedger) -> None:
    ledger.create("first", items(1))
    ledger.create("reembed", [], "docs", "reindex")  # run by its collection, never claimed
    ledger.create("second", [], "docs", "duplicates")
    assert ledger.claim("a", 30) == "first"
    assert ledger.claim("b", 30) == "second"
    assert ledger.claim("c", 30) is None
    assert ledger.get("first").status == "running"  # type: ignore[union-attr]


def test_a_lease_is_renewed_by_its_owner_only_and_released_to_a_status(
    ledger: JobLedger,
) -> None:
    ledger.create("j", items(1))
    assert ledger.claim("a", 30) == "j"
    assert ledger.renew("j", "a", 30) and not ledger.renew("j", "b", 30)
    ledger.release("j", "b", "queued")  # not b's: nothing happens
    assert ledger.get("j").status == "running"  # type: ignore[union-attr]
    ledger.release("j", "a", "queued")
    assert ledger.get("j").status == "queued"  # type: ignore[union-attr]
    assert not ledger.renew("j", "a", 30)
    assert ledger.claim("b", 30) == "j"
    ledger.set_status("j", "cancelled")
    assert not ledger.renew("j", "b", 30)  # cancelled elsewhere: its runner stops it


def test_a_shared_ledger_hands_a_job_whose_lease_ran_out_to_another(ledger: JobLedger) -> None:
    ledger.create("j", items(1))
    assert ledger.claim("dead", 0.2) == "j"
    assert ledger.claim("alive", 30) is None  # leased
    time.sleep(0.3)
    if not ledger.shared:  # one process: a job left running is interrupted at the next start
        assert ledger.claim("alive", 30) is None
        return
    assert ledger.claim("alive", 30) == "j"
    assert not ledger.renew("j", "dead", 30)


def test_concurrent_claims_never_take_the_same_job(ledger: JobLedger) -> None:
    for n in range(20):
        ledger.create(f"j{n}", items(1))
    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(lambda n: ledger.claim(f"owner{n}", 30), range(24)))
    taken = [job for job in claimed if job is not None]
    assert sorted(taken) == sorted(f"j{n}" for n in range(20))


def test_an_unknown_ledger_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown job ledger 'redis'.*sqlite, postgresql"):
        open_ledger(tmp_path, "redis://localhost")
