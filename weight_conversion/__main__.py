"""Command line: convert a published PyTorch checkpoint into a jaxdissect weights folder.

    python -m weight_conversion --model vgg16_places [--pth FILE] [--out DIR]

The one module of weight_conversion that imports jaxdissect: a thin shell over
jaxdissect.models.catalog and jaxdissect.models.conversion.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Sequence

from jaxdissect.models.catalog import available, get_spec, register_extra_models
from jaxdissect.models.conversion import convert_checkpoint
from weight_conversion.errors import DownloadError, KeyMapError, PthReadError


def _model_list() -> str:
    lines = []
    for name in available():
        spec = get_spec(name)
        src = (os.path.basename(spec.url) if spec.url else "packaged" if spec.packaged_weights
               else "original files (--pth FOLDER, or downloaded)" if spec.original_files else "--pth only")
        lines.append(f"  {name:26s} {spec.kind:10s} {src}")
    return "\n".join(lines)


def _takes_folder(model: str) -> bool:
    """Whether the model converts from a folder of original files (the segmenters)."""
    try:
        return get_spec(model).original_files is not None
    except KeyError:
        return False


def _parser(epilog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m weight_conversion",
        description=textwrap.fill(
            "Convert a PyTorch .pth checkpoint of a registered model into a jaxdissect weights folder "
            "(orbax checkpoint + meta.json). torch is not needed. Without --pth the official checkpoint "
            "is downloaded into the cache ($JAXDISSECT_HOME, default ~/.cache/jaxdissect) and its "
            "checksum verified.", 78),
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="registered model name (see the list below)")
    p.add_argument("--pth", metavar="FILE", help="a local .pth file to convert instead of downloading the official one "
                                                  "(for the segmenters: the folder of their original files)")
    p.add_argument("--out", metavar="DIR", help="output weights folder (default: <cache>/weights/<model>)")
    p.add_argument("--register", metavar="MODULE", action="append", default=[],
                   help="import MODULE first so the models it registers can be converted (repeatable; "
                        "$JAXDISSECT_EXTRA_MODELS=mod1,mod2 does the same)")
    p.add_argument("--list", action="store_true", help="list the registered models and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --register must take effect before the model list in --help is built.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--register", action="append", default=[])
    known, _ = pre.parse_known_args(argv)
    try:
        register_extra_models()
        register_extra_models(known.register)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    parser = _parser("models:\n" + _model_list())
    args = parser.parse_args(argv)
    if args.list:
        print(_model_list())
        return 0
    if not args.model:
        parser.error("--model is required (see the list of models below --help)")
    if args.pth is not None and not (os.path.isfile(args.pth) or _takes_folder(args.model) and os.path.isdir(args.pth)):
        print(f"error: --pth {args.pth!r}: no such file", file=sys.stderr)
        return 2
    try:
        out = convert_checkpoint(args.model, args.pth, args.out)
    except KeyError as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    except (PthReadError, KeyMapError, DownloadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"converted {args.model} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
