"""The shared command-line flags of a user's model."""
import argparse

import pytest

from jaxdissect.models import flags


def parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--weights")
    flags.add_model_flags(p)
    return p.parse_args(argv)


def test_flags_load_a_factory_model():
    args = parse(["--model", "own_models:make_nnx_cnn", "--input-size", "16", "--normalization", "[-1,1]"])
    assert flags.model_options(args) == {"input_size": "16", "normalization": "[-1,1]"}
    model = flags.load_from_flags(args)
    assert model.input_size == (16, 16) and model.normalization["mean"] == (0.5, 0.5, 0.5)


def test_flags_are_refused_for_a_registered_model():
    with pytest.raises(ValueError, match="--input-size, --prefix-tokens apply to --model package.module:factory"):
        flags.model_options(parse(["--model", "toy_classifier", "--input-size", "64", "--prefix-tokens", "1"]))
    assert flags.model_options(parse(["--model", "toy_classifier"])) == {}
