"""Which queues a worker takes jobs from: the one place that decides it, in Python and in
SQL alike."""

from dataclasses import dataclass

ALL_QUEUES = "*"


@dataclass(frozen=True, slots=True)
class QueueSelector:
    """Every queue (``"*"``), one queue by name, or every queue whose name starts with a
    prefix (``"mail*"``). Names and prefixes compare exactly, case included, on every
    database."""

    text: str

    def __post_init__(self) -> None:
        if not self.text or "*" in self.text[:-1]:
            raise ValueError(
                f"{self.text!r} is not a queue selector; a queue selector is a name, '*', or "
                "a prefix ending in '*' such as 'mail*'."
            )

    def __str__(self) -> str:
        return self.text

    @classmethod
    def is_valid(cls, text: str) -> bool:
        return bool(text) and "*" not in text[:-1]

    @property
    def prefix(self) -> str | None:
        """The prefix a prefix selector names; None for "*" and for one queue."""
        if self.text == ALL_QUEUES or not self.text.endswith("*"):
            return None
        return self.text[:-1]

    def matches(self, queue_name: str) -> bool:
        if self.text == ALL_QUEUES:
            return True
        if self.prefix is not None:
            return queue_name.startswith(self.prefix)
        return queue_name == self.text

    def sql(self, column: str) -> tuple[str, list[str | int]]:
        """The condition on ``column`` (a queue name) as SQL with ``%s`` parameters, and the
        parameters. A prefix is compared as text, not with LIKE: no wildcard to escape,
        and case-sensitive where LIKE is not (SQLite, MySQL)."""
        if self.text == ALL_QUEUES:
            return "1 = 1", []
        if self.prefix is not None:
            return f"SUBSTR({column}, 1, %s) = %s", [len(self.prefix), self.prefix]
        return f"{column} = %s", [self.text]


def serves(selectors: tuple[QueueSelector, ...], queue_name: str) -> bool:
    """Whether a worker with these selectors takes jobs from ``queue_name``."""
    return any(selector.matches(queue_name) for selector in selectors)
