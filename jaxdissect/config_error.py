"""The errors a user can fix: a setting that cannot work (naming the setting, so that a command
line can name its flag) and a problem with the user's files or environment (a missing file, an
unreadable dataset), reported without a traceback."""
from __future__ import annotations


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


class UserError(Exception):
    """A problem the user can fix (a missing file, an unknown name, no readable samples): printed
    in one line, without a traceback."""
