"""Every experiment config checks its counts the same way (config_error.check_whole_numbers):
a whole number of at least the field's minimum, None only where None means the default."""
import pytest

from jaxdissect.config_error import ConfigError, check_whole_numbers
from jaxdissect.experiments.adversarial import AdversarialConfig
from jaxdissect.experiments.classifier_ablation import ClassifierAblationConfig
from jaxdissect.experiments.generator_intervention import GeneratorInterventionConfig
from jaxdissect.experiments.shape_bias import ShapeBiasConfig
from jaxdissect.experiments.unit_selectivity import UnitSelectivityConfig


class Counts:
    def __init__(self, **values):
        self.__dict__.update(values)


def test_check_whole_numbers_by_hand():
    check_whole_numbers(Counts(a=1, b=0, c=None), {"a": 1, "b": 0, "c": 1}, optional=("c",))
    for bad, text in ((0, "0"), (2.5, "2.5"), (True, "True"), ("3", "'3'"), (None, "None")):
        with pytest.raises(ConfigError) as e:
            check_whole_numbers(Counts(a=bad), {"a": 1})
        assert e.value.field == "a" and e.value.message == f"must be a whole number >= 1, got {text}"
    with pytest.raises(ConfigError, match=r"a: must be a whole number >= 1 \(or None for the default\), got -1"):
        check_whole_numbers(Counts(a=-1), {"a": 1}, optional=("a",))


@pytest.mark.parametrize("config, field, optional", [
    (ClassifierAblationConfig, "batch_size", False), (ClassifierAblationConfig, "val_size", True),
    (GeneratorInterventionConfig, "chunk", False), (GeneratorInterventionConfig, "sample_size", True),
    (AdversarialConfig, "important_units", False), (AdversarialConfig, "train_size", True),
    (ShapeBiasConfig, "topk", False), (ShapeBiasConfig, "sample_size", True),
    (UnitSelectivityConfig, "max_classes", False), (UnitSelectivityConfig, "sample_size", True),
])
def test_configs_refuse_counts_that_are_not_whole_numbers(config, field, optional):
    for bad in (0, 2.5, True):
        with pytest.raises(ConfigError) as e:
            config(**{field: bad})
        assert e.value.field == field and "whole number >= 1" in e.value.message
    if optional:
        assert getattr(config(**{field: None}), field) is None
    else:
        with pytest.raises(ConfigError):
            config(**{field: None})
