"""Command-line flags derived from config dataclasses: one source of defaults and help.

A config field declares its help (and optionally its flag names, choices, a metavar, and for a
tuple field whether it takes zero values: nargs="*") in its
metadata through `option(...)`; `add_config_flags(parser, Config)` adds one flag per field and
`config_from_args(Config, args)` builds the config back. Configs validate themselves and raise
`ConfigError(flag, message)` (jaxdissect.config_error).
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Callable, Sequence


def option(default: Any = None, help: str = "", *, flags: Sequence[str] | None = None, choices: Sequence[Any] | None = None,
           metavar: str | None = None, cli: bool = True, default_factory: Callable | None = None,
           nargs: str | None = None) -> Any:
    """A dataclass field with command-line metadata (help text, flag names, choices; `nargs` for a
    tuple field: "+" by default, "*" when giving the flag with no value means something)."""
    if nargs not in (None, "+", "*"):
        raise ValueError(f"nargs must be '+' or '*', got {nargs!r}")
    meta = {"help": help, "flags": tuple(flags) if flags else None, "choices": choices, "metavar": metavar, "cli": cli,
            "nargs": nargs}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the element type, is it a tuple of them) of a field annotation like `int | None`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin is tuple:
        return typing.get_args(annotation)[0], True
    return annotation, False


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type, skip: Sequence[str] = ()) -> None:
    """One flag per field of `config_cls` (fields with cli=False or named in `skip` left out)."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        meta = f.metadata
        if not meta.get("cli", True) or f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind, many = _base_type(hints[f.name])
        help_text = meta.get("help", "")
        flags = list(meta.get("flags") or [flag_name(f.name)])
        if kind is bool:
            if default:
                flags = list(meta.get("flags") or ["--no-" + f.name.replace("_", "-")])
                parser.add_argument(*flags, dest=f.name, action="store_false", help=help_text)
            else:
                parser.add_argument(*flags, dest=f.name, action="store_true", help=help_text)
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": help_text}
        if many:
            kwargs["nargs"] = meta.get("nargs") or "+"
        kwargs["type"] = _parser(kind, flags[0])
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        parser.add_argument(*flags, **kwargs)


def _parser(kind: Any, flag: str) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {getattr(kind, '__name__', kind)}, got {text!r}") from None
    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def config_from_args(config_cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The config whose fields are the parsed flags (tuples for multi-valued flags)."""
    values = {}
    for f in dataclasses.fields(config_cls):
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif hasattr(args, f.name):
            v = getattr(args, f.name)
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return config_cls(**values)
