from collections.abc import Iterator

from django.db.models import Model, QuerySet


def pk_batches(queryset: QuerySet[Model], batch_size: int) -> Iterator[list[int]]:
    """The primary keys of ``queryset`` in ascending lists of at most ``batch_size``, each read
    by one query that starts after the previous batch: never all in memory at once."""
    keys = queryset.order_by("pk").values_list("pk", flat=True)
    batch = list(keys[:batch_size])
    while batch:
        yield batch
        if len(batch) < batch_size:
            return
        batch = list(keys.filter(pk__gt=batch[-1])[:batch_size])
