"""Command-line flags for a user's model (`--model package.module:factory`), shared by every script.

    add_model_flags(parser)                      # --input-size --normalization --key-map --prefix-tokens
    model = load_from_flags(args)                # models.load(args.model, args.weights, **options)

Errors are ValueErrors naming the flag or file (scripts turn them into exit code 2).
"""
from __future__ import annotations

import argparse
from typing import Any

from jaxdissect.models import loading, user_model
from jaxdissect.models.registry import LoadedModel

FLAGS = ("input_size", "normalization", "key_map", "prefix_tokens")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that shape a user's model; they apply only to --model package.module:factory."""
    g = parser.add_argument_group("your own model (--model package.module:factory)")
    g.add_argument("--input-size", default=None, help="image size the model takes: 128 or 128x96 (default 224)")
    g.add_argument("--normalization", default=None,
                   help="imagenet (default), [-1,1], none (pixels in [0, 1]), MEAN,STD or M1,M2,M3,S1,S2,S3")
    g.add_argument("--key-map", default=None,
                   help="for --weights FILE.pth: package.module:name of a function (state dict -> variables) or "
                        "of a mapping {torch key: dotted variable path}")
    g.add_argument("--prefix-tokens", type=int, default=None,
                   help="leading class/register tokens of token layers (default: 0 or 1, from a square grid)")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The user-model options given on the command line; ValueError when given for a registered model."""
    options = {k: getattr(args, k) for k in FLAGS if getattr(args, k, None) is not None}
    if options and not user_model.is_factory_path(getattr(args, "model", "") or ""):
        flags = ", ".join("--" + k.replace("_", "-") for k in options)
        raise ValueError(f"{flags} apply to --model package.module:factory, not to the registered model {args.model!r}")
    return options


def load_from_flags(args: argparse.Namespace) -> LoadedModel:
    """models.load(args.model, args.weights, **the user-model options)."""
    return loading.load(args.model, getattr(args, "weights", None), **model_options(args))


__all__ = ["add_model_flags", "model_options", "load_from_flags", "FLAGS"]
