"""Engine creation: SQLite in WAL mode by default, any SQLAlchemy URL (PostgreSQL) otherwise."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine, select

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
    """Create missing tables and record the schema version; refuse a database from a newer release."""
    assert models  # the import registers the tables on SQLModel.metadata
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        row = session.exec(select(Meta).where(Meta.key == "schema_version")).first()
        if row is None:
            session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            session.commit()
            return SCHEMA_VERSION
        found = int(row.value)
        if found > SCHEMA_VERSION:
            raise SchemaError(
                f"the database has schema version {found}, newer than this release's {SCHEMA_VERSION}; "
                "upgrade the assistant or point ASSISTANT_DATABASE_URL at another database")
        # Migrations from older versions go here, one step per version.
        return found
