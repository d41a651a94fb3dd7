"""The PostgreSQL records' connection pool through an outage of a real (throwaway) cluster."""

from __future__ import annotations

import threading
import time

import pytest

from index.errors import DatabaseUnavailableError
from index.postgres_records import PostgresDatabase
from tests.postgres import ThrowawayPostgres

# Long enough that psycopg_pool's default backoff (1, 2, 4, 8 s between attempts) would put its
# next attempt seconds after the database is back
OUTAGE_S = 8.0


def test_the_pool_serves_again_within_seconds_of_the_database_returning_from_a_long_outage(
    postgres: ThrowawayPostgres,
) -> None:
    db = PostgresDatabase(postgres.url, "outage")
    try:
        assert db.rows("SELECT 1") == [(1,)]
        postgres.kill()
        down_until = time.monotonic() + OUTAGE_S
        while time.monotonic() < down_until:  # requests keep coming and fail meanwhile
            with pytest.raises(DatabaseUnavailableError):
                db.rows("SELECT 1")
        postgres.start()  # returns once the server accepts connections
        back = time.monotonic()
        assert db.rows("SELECT 1") == [(1,)]
        assert time.monotonic() - back < 3.0
    finally:
        db.close()


def test_a_pool_opened_while_the_database_is_down_opens_when_it_is_back(
    postgres: ThrowawayPostgres,
) -> None:
    postgres.kill()
    restart = threading.Timer(OUTAGE_S, postgres.start)
    restart.start()
    try:
        db = PostgresDatabase(postgres.url, "opened-during-an-outage")
    finally:
        restart.join()
    try:
        assert db.rows("SELECT 1") == [(1,)]
    finally:
        db.close()
