"""Fields of dq's own."""

from typing import TYPE_CHECKING, Any, TypeVar

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper

# What django-stubs types a field's value as, when set and when read.
_ST = TypeVar("_ST", contravariant=True)
_GT = TypeVar("_GT", covariant=True)

if TYPE_CHECKING:
    CharField = models.CharField
else:

    class CharField(models.CharField):
        """Django's own, with the type arguments django-stubs gives it (as Django's
        ForeignKey takes them) when the code runs."""

        def __class_getitem__(cls, *args: Any) -> type:
            return cls


class ExactCharField(CharField[_ST, _GT]):
    """Text that compares exactly, case and trailing spaces included, on every database:
    names of queues, tasks and backends, concurrency and unique keys. PostgreSQL and SQLite
    compare text so already; MySQL's and MariaDB's default collations ignore case and pad
    with spaces ("Mail" = "mail " there), so on them the column has a binary collation
    that does not pad."""

    def db_parameters(self, connection: BaseDatabaseWrapper) -> dict[str, Any]:
        parameters = super().db_parameters(connection)
        if connection.vendor == "mysql" and self.db_collation is None:
            mariadb = getattr(connection, "mysql_is_mariadb", False)
            parameters["collation"] = "utf8mb4_nopad_bin" if mariadb else "utf8mb4_0900_bin"
        return parameters


class PartialIndex(models.Index):
    """An index with a condition, which MySQL and MariaDB cannot keep: there Django makes
    it an index of the whole table instead (as good, only larger), without warning every
    command that it does so (models.W037)."""

    def check(self, model: type[models.Model], connection: BaseDatabaseWrapper) -> list[Any]:
        return [error for error in super().check(model, connection) if error.id != "models.W037"]
