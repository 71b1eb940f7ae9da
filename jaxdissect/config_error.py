"""The errors a user can fix: a setting that cannot work (naming the setting, so that a command
line can name its flag) and a problem with the user's files or environment (a missing file, an
unreadable dataset), reported without a traceback."""
from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence


class ConfigError(ValueError):
    """A config field holds a value that cannot work; `field` is its name (`remove_class`), which a
    script reports as its flag (`--remove-class`)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    @property
    def flag(self) -> str:
        """The command-line flag of the field (a field given as '--flag' is its own flag)."""
        return self.field if self.field.startswith("--") else "--" + self.field.replace("_", "-")


def check_whole_numbers(config: Any, minimums: Mapping[str, int], optional: Sequence[str] = ()) -> None:
    """Each field named in `minimums` holds a whole number (not a bool, not 2.5) of at least its
    minimum; a field in `optional` may also be None (its default). ConfigError names the first
    that does not: the one check behind every experiment config's counts."""
    for field, low in minimums.items():
        value = getattr(config, field)
        if value is None and field in optional:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            default = " (or None for the default)" if field in optional else ""
            raise ConfigError(field, f"must be a whole number >= {low}{default}, got {value!r}")


class UserError(Exception):
    """A problem the user can fix (a missing file, an unknown name, no readable samples): printed
    in one line, without a traceback."""
