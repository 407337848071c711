"""dq's work that depends on the database, one class per database behind one interface
(``dq.db.base.Database``); everything else in dq is ORM.

``database(alias)`` is the class for the database at ``alias``, bound to it. Adding a
database is adding a subclass of ``Database`` that overrides what it does better, and its
vendor here.
"""

from django.db import connections

from .base import Claim, Database, End, Flushed, Listener, Returned
from .mysql import MySQLDatabase
from .postgresql import PostgreSQLDatabase
from .sqlite import SQLiteDatabase

__all__ = ["Claim", "Database", "End", "Flushed", "Listener", "Returned", "database"]

BY_VENDOR: dict[str, type[Database]] = {
    "mysql": MySQLDatabase,
    "postgresql": PostgreSQLDatabase,
    "sqlite": SQLiteDatabase,
}


def database(alias: str) -> Database:
    """dq's database work on ``alias``: its database's own class, or the one that works on
    any database."""
    return BY_VENDOR.get(connections[alias].vendor, Database)(alias)
