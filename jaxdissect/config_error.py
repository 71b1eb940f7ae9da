"""The error of a setting that cannot work, naming the setting, so that a command line can name its flag."""
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
        """The command-line flag of the field."""
        return "--" + self.field.replace("_", "-")
