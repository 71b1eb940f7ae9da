"""What every script's command line shares, so that no flag can be silently wrong.

- `ArgumentParser`: one-line errors (exit 2) naming the flag and what it accepts, no abbreviated
  flags, help showing every default, and `--debug`.
- Value types (`int_at_least`, `float_in`, ...) that say what they accept.
- Checks made after parsing and before any work: model, layer, segmenter, paths, devices, the
  multi-process flags.
- `user_errors`: a user's mistake found during the run (a missing file, a bad dataset, a setting
  that cannot work) becomes a one-line message and exit 2 (a results folder held by another run
  exits 3); `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from typing import Callable, Iterator, Sequence

import jax

from jaxdissect.capturing import capture_fn, valid_layer_names
from jaxdissect.config_error import ConfigError, UserError
from jaxdissect.dissect.config import MODEL_ALIASES
from jaxdissect.models.registry import LoadedModel, ModelSpec, available, get_spec
from jaxdissect.run_lock import RunLockedError
from jaxdissect.segment.merge import SEGMENTER_NAMES
from weight_conversion.errors import DownloadError
from jaxdissect.models import flags as model_flags
from jaxdissect.models import user_model

EXIT_USER_ERROR = 2
EXIT_LOCKED = 3


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every flag's default in its help (unless the help already says it, or the flag is an on/off
    switch or has no value by default); the description and epilog kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))  # --no-x: "default: True" misleads
        if "default" in text or switch or action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """A parser whose errors are one line naming the flag (exit 2), with --debug added."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # '--val 5' must not silently mean --val-size
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true",
                          help="on an error, show the full traceback instead of a one-line message")

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")

    def fail(self, flag: str, message: str):
        """Exit 2 with `argument FLAG: message`."""
        self.error(f"argument {flag}: {message}")

    @classmethod
    def from_doc(cls, prog: str, doc: str) -> "ArgumentParser":
        """A script's parser: its docstring's first paragraph is the description, the rest the epilog."""
        first, _, rest = doc.partition("\n\n")
        return cls(prog=prog, description=first, epilog=rest or None)

    def parse_config_args(self, argv: Sequence[str] | None, build_config: Callable[[argparse.Namespace], object]
                          ) -> argparse.Namespace:
        """Parse `argv`, then build the experiment's config from the flags (it checks its own values):
        a ConfigError exits 2 naming its flag, before any work."""
        args = self.parse_args(argv)
        try:
            build_config(args)
        except ConfigError as e:
            self.fail(e.flag, e.message)
        return args


# ---------------------------------------------------------------------------------------------
# Value types: each raises ArgumentTypeError saying what it accepts


def _parse_number(kind: type, text: str, accepts: Callable[[float], bool], allowed: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or not accepts(value):
        raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer >= low."""
    def parse(text: str) -> int:
        return _parse_number(int, text, lambda v: v >= low, f"an integer >= {low}")
    return parse


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An integer in [low, high]."""
    def parse(text: str) -> int:
        return _parse_number(int, text, lambda v: low <= v <= high, f"an integer from {low} to {high}")
    return parse


def int_multiple_of(step: int, low: int, high: int | None = None) -> Callable[[str], int]:
    """A multiple of `step` from `low` (to `high`)."""
    allowed = f"a multiple of {step} from {low}" + (f" to {high}" if high is not None else "")

    def parse(text: str) -> int:
        return _parse_number(int, text, lambda v: v % step == 0 and v >= low and (high is None or v <= high), allowed)
    return parse


def power_of_two(low: int, high: int) -> Callable[[str], int]:
    """A power of two in [low, high]."""
    def parse(text: str) -> int:
        return _parse_number(int, text, lambda v: low <= v <= high and v & (v - 1) == 0,
                             f"a power of two from {low} to {high}")
    return parse


def float_in(low: float | None = None, high: float | None = None, low_open: bool = False,
             high_open: bool = False) -> Callable[[str], float]:
    """A finite number within the bounds given (open or closed)."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    allowed = "a number " + " and ".join(parts) if parts else "a finite number"

    def accepts(v: float) -> bool:
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or (v < high if high_open else v <= high)

    def parse(text: str) -> float:
        return _parse_number(float, text, accepts, allowed)
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
positive_float = float_in(0, low_open=True)
nonnegative_float = float_in(0)
open_unit_float = float_in(0, 1, low_open=True, high_open=True)


# ---------------------------------------------------------------------------------------------
# Checks after parsing, before any work


def check_model(parser: ArgumentParser, flag: str, name: str, kinds: Sequence[str]) -> ModelSpec:
    """The spec of a registered model (original short names accepted) of one of `kinds`."""
    name = MODEL_ALIASES.get(name, name)
    fitting = [n for n in available() if get_spec(n).kind in kinds]
    try:
        spec = get_spec(name)
    except KeyError:
        parser.fail(flag, f"unknown model {name!r}; choose from {', '.join(fitting)}")
    if spec.kind not in kinds:
        parser.fail(flag, f"{name} is a {spec.kind}, this needs a {' or '.join(kinds)}: {', '.join(fitting)}")
    return spec


def spec_layer_names(spec: ModelSpec) -> tuple[str, ...]:
    """Every layer name a model built from its spec's default config calls (no weights read)."""
    module = spec.build(spec.default_config)
    example = spec.abstract_input()
    variables = jax.eval_shape(module.init, jax.random.key(0), example)
    model = LoadedModel(spec.name, spec.kind, module, variables, dict(spec.default_config), spec.input_size,
                        spec.normalization, spec.default_layer, tuple(spec.layer_names), None)
    return valid_layer_names(model, example)


def spec_layer_units(spec: ModelSpec, layer: str) -> int:
    """The unit (channel) count of a layer of the model built from its spec (no weights read)."""
    module = spec.build(spec.default_config)
    example = spec.abstract_input()
    variables = jax.eval_shape(module.init, jax.random.key(0), example)
    _, acts = jax.eval_shape(capture_fn(module, (layer,)), variables, example, {})
    return int(acts[layer].shape[-1])


def check_layers(parser: ArgumentParser, flag: str, spec: ModelSpec, layers: Sequence[str] | None,
                 weights: str | None = None) -> None:
    """Each layer (or its short VGG name, 'conv5_3') is one the model calls. Skipped when --weights
    may change the layers (their count follows the checkpoint): the run checks them after loading."""
    if not layers or (weights is not None and spec.layer_names_for is not None):
        return
    valid = set(spec_layer_names(spec))
    for layer in layers:
        if layer not in valid and f"features.{layer}" not in valid:
            parser.fail(flag, f"unknown layer {layer!r} of {spec.name}; dissectable layers: "
                              f"{', '.join(spec.layer_names)}")


def check_seg(parser: ArgumentParser, flag: str, name: str | None, scenes: bool = False) -> None:
    """A segmenter name a script can load: toy, net[p][q][c] (and scenes, exact labels, where allowed)."""
    known = (("scenes",) if scenes else ()) + ("toy",) + tuple(SEGMENTER_NAMES)
    if name is not None and name not in known:
        parser.fail(flag, f"unknown segmenter {name!r}; choose from {', '.join(known)}")


def check_dataset(parser: ArgumentParser, flag: str, dataset: str | None, named: Sequence[str],
                  splits: Sequence[str] = ()) -> None:
    """One of the `named` datasets, tfds:NAME[:SPLIT], or an existing folder (holding `splits`)."""
    if dataset is None or dataset in named:
        return
    if dataset.startswith("tfds:"):
        parts = dataset[len("tfds:"):].split(":")
        if not parts[0] or len(parts) > 2 or (len(parts) == 2 and not parts[1]):
            parser.fail(flag, f"{dataset!r}: expected tfds:NAME or tfds:NAME:SPLIT")
        return
    allowed = f"{', '.join(repr(n) for n in named)}, tfds:NAME or a folder"
    if not os.path.isdir(dataset):
        parser.fail(flag, f"{dataset!r} is not a folder (expected {allowed})")
    for split in splits:
        if not os.path.isdir(os.path.join(dataset, split)):
            parser.fail(flag, f"folder {dataset!r} has no {split}/ folder (it needs {', '.join(s + '/' for s in splits)}"
                              f" with one folder per class)")


def check_existing(parser: ArgumentParser, flag: str, path: str | None, kind: str = "file or folder") -> None:
    """The path exists (when given)."""
    if path is not None and not os.path.exists(path):
        parser.fail(flag, f"no such {kind}: {path!r}")


def check_outdir(parser: ArgumentParser, flag: str, path: str) -> None:
    """The output folder is a folder or can be made: nothing on its path is a file."""
    probe = os.path.abspath(path)
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        parser.fail(flag, f"{path!r} cannot be a folder: {probe!r} is a file")


def check_distributed(parser: ArgumentParser, args: argparse.Namespace) -> None:
    """The multi-process flags of `parallel.add_distributed_flags`: host:port, counts in range."""
    if args.coordinator is not None and not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):\d{1,5}", args.coordinator):
        parser.fail("--coordinator", f"expected host:port, got {args.coordinator!r}")
    if args.num_processes is not None and args.num_processes < 1:
        parser.fail("--num-processes", f"expected an integer >= 1, got {args.num_processes}")
    if args.process_id is not None:
        if args.process_id < 0:
            parser.fail("--process-id", f"expected an integer >= 0, got {args.process_id}")
        if args.num_processes is not None and args.process_id >= args.num_processes:
            parser.fail("--process-id", f"expected 0 .. {args.num_processes - 1} (--num-processes "
                                        f"{args.num_processes}), got {args.process_id}")


def check_devices(devices: int | None) -> None:
    """--devices asks for at most the devices JAX sees (after a multi-process start). Raises ConfigError."""
    if devices is not None and devices > jax.device_count():
        raise ConfigError("devices", f"asked for {devices} devices, but {jax.device_count()} are available "
                                     f"({jax.devices()[0].platform})")


# ---------------------------------------------------------------------------------------------
# Errors found during the run

# bad input or settings, missing files, downloads, a model that computes NaN
USER_ERRORS = (ValueError, KeyError, OSError, DownloadError, UserError, FloatingPointError)


def _message(e: BaseException) -> str:
    """The error's text with runs of spaces collapsed; a message written as several lines (a list
    of missing files) keeps its lines."""
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)  # KeyError's str() adds quotes
    lines = [" ".join(line.split()) for line in str(text).splitlines()]
    return "\n".join(line for line in lines if line) or type(e).__name__


def run_script(prog: str, parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
               run: Callable[[argparse.Namespace], int | None], argv: Sequence[str] | None = None) -> int:
    """A script's main: parse (bad flags exit 2 with one line), then `run(args)` with the user's
    mistakes reported in one line (`user_errors`); returns the exit code."""
    try:
        args = parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad flag (2), already reported by the parser
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR
    try:
        with user_errors(prog, args.debug):
            return int(run(args) or 0)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR


@contextlib.contextmanager
def user_errors(prog: str, debug: bool = False) -> Iterator[None]:
    """Report a user's mistake found during the run in one line and exit 2 (3 for a results
    folder another run holds); with `debug`, let the exception and its traceback through."""
    try:
        yield
    except RunLockedError as e:
        if debug:
            raise
        sys.stderr.write(f"{prog}: {_message(e)}\n")
        raise SystemExit(EXIT_LOCKED) from None
    except ConfigError as e:
        if debug:
            raise
        sys.stderr.write(f"{prog}: error: argument {e.flag}: {' '.join(e.message.split())}\n")
        raise SystemExit(EXIT_USER_ERROR) from None
    except USER_ERRORS as e:
        if debug:
            raise
        sys.stderr.write(f"{prog}: error: {_message(e)} (--debug shows the traceback)\n")
        raise SystemExit(EXIT_USER_ERROR) from None


def check_model_or_factory(parser: ArgumentParser, flag: str, args: argparse.Namespace,
                           kinds: Sequence[str]) -> tuple[ModelSpec | None, LoadedModel | None]:
    """(spec, None) for a registered model; (None, the loaded model) for your own model given as
    package.module:factory with the --input-size/--normalization/--key-map/--prefix-tokens flags
    (loaded here, so that a bad factory, bad weights or a wrong kind exit 2 before any work)."""
    if user_model.is_factory_path(args.model):
        try:
            model = model_flags.load_from_flags(args)
        except (ValueError, KeyError, ImportError, AttributeError, TypeError, OSError) as e:
            parser.fail(flag, _message(e))
        if model.kind not in kinds:
            parser.fail(flag, f"{args.model} builds a {model.kind}; this needs a {' or '.join(kinds)}")
        return None, model
    try:
        model_flags.model_options(args)
    except ValueError as e:
        parser.fail(flag, _message(e))
    return check_model(parser, flag, args.model, kinds), None
