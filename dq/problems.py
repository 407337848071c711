"""What a setting got wrong: a ``Problem`` (a system check's id and message), the sentence
for a number out of range, and a section of settings read into its dataclass."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the settings: reported by ``manage.py check`` as ``id``."""

    id: str
    message: str


def parse_section[C](
    section: object, config_class: type[C], keys: set[str], where: str, problems: list[Problem]
) -> C | None:
    """``section`` (a dict of settings at ``where``) as a ``config_class``, its unknown keys
    reported; None, reported, if it is no dict."""
    if not isinstance(section, dict):
        problems.append(Problem("dq.E002", f"OPTIONS['{where}'] must be a dict."))
        return None
    unknown = sorted(set(section) - keys)
    for key in unknown:
        problems.append(
            Problem("dq.E001", f"Unknown option {where}.{key}; known: {', '.join(sorted(keys))}.")
        )
    return config_class(**{k: v for k, v in section.items() if k in keys})


def number_problem(
    value: object, name: str, *, integer: bool = False, zero: bool = False, unit: str = ""
) -> str | None:
    """None when ``value`` is a number > 0 (>= 0 with ``zero``; a whole one with
    ``integer``), else the sentence that says what ``name`` must be."""
    kinds = int if integer else int | float
    if (
        isinstance(value, kinds)
        and not isinstance(value, bool)
        and (value >= 0 if zero else value > 0)
    ):
        return None
    expected = "a whole number" if integer else f"a number{unit}"
    return f"{name} must be {expected} {'>=' if zero else '>'} 0, not {value!r}."
