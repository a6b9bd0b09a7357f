"""Engine creation: SQLite in WAL mode by default, any SQLAlchemy URL (PostgreSQL) otherwise."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel, create_engine, select

from . import models
from .models import Meta, SCHEMA_VERSION


class SchemaError(RuntimeError):
    pass


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # every pooled connection needs them
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


def init_schema(engine: Engine) -> int:
    """Create missing tables, migrate an older schema, record the version; refuse a database from a newer release.
    On PostgreSQL an advisory lock makes processes that start together do this one at a time."""
    assert models  # the import registers the tables on SQLModel.metadata
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        SQLModel.metadata.create_all(connection)
        row = connection.execute(select(Meta.value).where(Meta.key == "schema_version")).first()
        if row is None:
            connection.execute(Meta.__table__.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            return SCHEMA_VERSION
        found = int(row[0])
        if found > SCHEMA_VERSION:
            raise SchemaError(
                f"the database has schema version {found}, newer than this release's {SCHEMA_VERSION}; "
                "upgrade the assistant or point ASSISTANT_DATABASE_URL at another database")
        for version in range(found + 1, SCHEMA_VERSION + 1):  # one step per version, in this transaction
            for statement in MIGRATIONS[version]:
                connection.execute(text(statement))
        connection.execute(text("UPDATE meta SET value = :v WHERE key = 'schema_version'"), {"v": str(SCHEMA_VERSION)})
    return SCHEMA_VERSION


SCHEMA_LOCK_KEY = 0x61737369  # "assi": any constant shared by every process of this application

MIGRATIONS: dict[int, list[str]] = {
    2: ["ALTER TABLE job ADD COLUMN fence INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE job ADD COLUMN engine VARCHAR",
        "ALTER TABLE job ADD COLUMN container VARCHAR"],
    3: ['ALTER TABLE "user" ADD COLUMN revoked INTEGER NOT NULL DEFAULT 0'],
    4: [],  # the notification table is new: create_all above makes it
    5: [],  # the steer_message table (and its index) is new: create_all above makes it
}
