"""The command lines of the shape-bias and unit-selectivity analyses: user mistakes exit 2 with a
one-line message naming the flag or file."""
import argparse
import dataclasses
import importlib.util
import os

import numpy as np
import pytest

from jaxdissect import cli
from jaxdissect.config_error import ConfigError
from jaxdissect.experiments import shape_bias, unit_selectivity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, message", [
    (["--quantile", "2"], "argument --quantile: must lie in (0, 1)"),
    (["--dataset", "no/such/folder"], "needs --paired-dataset"),
    (["--paired-dataset", "scenes"], "pairs with a stylized scenes world"),
    (["--dataset", "scenes-stylized", "--paired-dataset", "scenes"], "give the original world first"),
    (["--paired-dataset", "scenes-restyled"], "scenes-restyled restyles a stylized world"),
    (["--layers", "conv9_9"], "unknown layer 'conv9_9'"),
    (["--model", "no_such_model"], "no_such_model"),
])
def test_shape_bias_bad_input_exits_2(argv, message, capsys, tmp_path):
    assert script("shape_bias").main(argv + ["--outdir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shape_bias.py: error:") and message in err and err.count("\n") == 1


def test_shape_bias_missing_folder_exits_2(capsys, tmp_path):
    (tmp_path / "a").mkdir()
    argv = ["--dataset", str(tmp_path / "a"), "--paired-dataset", str(tmp_path / "b"), "--outdir", str(tmp_path)]
    assert script("shape_bias").main(argv) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--ranking", "nowhere.npz"], "no unit ranking at 'nowhere.npz'"),
    (["--units", "999"], "unit 999 out of range"),
    (["--top-units", "-1"], "argument --top-units: must be a whole number >= 0"),
])
def test_unit_selectivity_bad_input_exits_2(argv, message, capsys, tmp_path):
    argv = argv + ["--sample-size", "8", "--outdir", str(tmp_path), "--no-progress"]
    assert script("unit_selectivity").main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("unit_selectivity.py: error:") and message in err


def test_unit_selectivity_with_nothing_to_plot_says_how(capsys, tmp_path):
    assert script("unit_selectivity").main(["--outdir", str(tmp_path), "--sample-size", "8"]) == 2
    assert "give --units, or run scripts/intervene_classifier.py" in capsys.readouterr().err


@pytest.mark.parametrize("name, argv, flag", [
    ("shape_bias", ["--batch-size", "0"], "--batch-size"),
    ("shape_bias", ["--miniou", "2"], "--miniou"),
    ("shape_bias", ["--sample-size", "0"], "--sample-size"),
    ("shape_bias", ["--topk", "x"], "--topk"),
    ("shape_bias", ["--model", "toy_generator"], "--model"),
    ("shape_bias", ["--seg", "nets"], "--seg"),
    ("shape_bias", ["--weights", "{tmp}/missing"], "--weights"),
    ("shape_bias", ["--layers", "conv4_2", "conv4_2"], "--layers"),
    ("shape_bias", ["--num-processes", "0"], "--num-processes"),
    ("unit_selectivity", ["--max-classes", "0"], "--max-classes"),
    ("unit_selectivity", ["--batch-size", "0"], "--batch-size"),
    ("unit_selectivity", ["--units", "-1"], "--units"),
    ("unit_selectivity", ["--model", "toy_generator"], "--model"),
    ("unit_selectivity", ["--layer", "conv9_9"], "--layer"),
    ("unit_selectivity", ["--dataset", "{tmp}/missing"], "--dataset"),
])
def test_bad_flags_exit_2_naming_the_flag_before_any_work(name, argv, flag, capsys, tmp_path):
    out = tmp_path / "out"
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--outdir", str(out), "--no-progress"]
    assert script(name).main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{name}.py: error: argument {flag}") and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("name, config", [("shape_bias", shape_bias.ShapeBiasConfig),
                                          ("unit_selectivity", unit_selectivity.UnitSelectivityConfig)])
def test_flags_are_the_config_fields_with_their_defaults(name, config, monkeypatch, capsys):
    parsers = []
    original = cli.ArgumentParser.parse_args

    def recording(self, *a, **k):
        parsers.append(self)
        return original(self, *a, **k)

    monkeypatch.setattr(cli.ArgumentParser, "parse_args", recording)
    module = script(name)
    assert module.main(["--help"]) == 0
    assert "(default: " in capsys.readouterr().out
    [parser] = parsers
    defaults = {a.dest: a.default for a in parser._actions if not isinstance(a, argparse._HelpAction)}
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, action.dest
        if action.default not in (None, False) and not isinstance(action.default, bool):
            assert "default" in formatter._get_help_string(action), action.dest
    for field in dataclasses.fields(config):
        if field.metadata.get("cli", True):
            assert defaults[field.name] == field.default, field.name
    # the flags give the config's defaults: the script's config is the default config
    args = parser.parse_args(["--outdir", "results"])
    assert module.config_from_args(args) == config()


def test_configs_check_their_own_values():
    with pytest.raises(ConfigError, match="quantile") as e:
        shape_bias.ShapeBiasConfig(quantile=1.5)
    assert e.value.flag == "--quantile"
    with pytest.raises(ConfigError) as e:
        shape_bias.ShapeBiasConfig(batch_size=0)
    assert e.value.flag == "--batch-size"
    with pytest.raises(ConfigError) as e:
        shape_bias.paired_name(shape_bias.ShapeBiasConfig(dataset="some/folder"))
    assert e.value.flag == "--paired-dataset"
    with pytest.raises(ConfigError) as e:
        unit_selectivity.UnitSelectivityConfig(top_units=-1)
    assert e.value.flag == "--top-units"
    with pytest.raises(ConfigError) as e:
        unit_selectivity.UnitSelectivityConfig(units=(3, -2))
    assert e.value.flag == "--units"
    assert shape_bias.ShapeBiasConfig(model="vgg16").model_name == "vgg16_places"


def test_result_folders_keep_their_names():
    cfg = shape_bias.ShapeBiasConfig
    assert shape_bias.experiment_dir(cfg(), "toy_classifier") == os.path.join(
        "results", "toy_classifier-scenes-stylized-shapebias")
    assert shape_bias.experiment_dir(cfg(paired_dataset="scenes-stylized-materials", quantile=0.005, outdir="o"),
                                     "vgg16_places") == os.path.join("o", "vgg16-scenes-stylized-materials-shapebias-5")
    assert shape_bias.experiment_dir(cfg(dataset="data/orig", paired_dataset="data/styl"),
                                     "vgg16_places") == os.path.join("results", "vgg16-orig-styl-shapebias")
    assert shape_bias.experiment_dir(cfg(dataset="data/places/val", paired_dataset="data/stylized/val"),
                                     "vgg16_places") == os.path.join("results", "vgg16-val-shapebias")
    usc = unit_selectivity.UnitSelectivityConfig
    assert unit_selectivity.experiment_dir(usc(), "vgg16_places", "features.conv5_3") == os.path.join(
        "results", "vgg16-scenes-selectivity-conv5_3")
    assert unit_selectivity.experiment_dir(usc(dataset="data/places/val"), "toy_classifier", "features.conv4_2") == \
        os.path.join("results", "toy_classifier-val-selectivity-conv4_2")
    assert unit_selectivity.ablation_ranking_file(usc(outdir="o"), "vgg16_places", "features.conv5_3") == \
        os.path.join("o", "vgg16-scenes-intervention-conv5_3", "class_units.npz")


def test_unit_selectivity_driver_finds_the_ablation_ranking(tmp_path, capsys):
    # the ranking the classifier ablation of the same model, dataset and layer wrote is found under --outdir
    from jaxdissect.data.scenes import SCENE_CLASSES, SCENE_LABELS
    from planted import EncodedScenes, planted_model

    config = unit_selectivity.UnitSelectivityConfig(outdir=str(tmp_path), top_units=1, batch_size=16, progress=False)
    ranking = np.tile(np.arange(55)[::-1], (8, 1))
    ablation = tmp_path / "planted-scenes-intervention-planted"
    ablation.mkdir()
    np.savez(ablation / "class_units.npz", ranking=ranking)
    run = unit_selectivity.run_experiment(config, model=planted_model(), source=EncodedScenes(size=16))
    assert run.directory == os.path.join(str(tmp_path), "planted-scenes-selectivity-planted")
    assert run.ranking_file == str(ablation / "class_units.npz") and run.units == (54,)
    assert set(run.important) == set(SCENE_CLASSES) and os.path.exists(run.outputs["json"])
    sand = SCENE_LABELS.index("sand")
    with pytest.raises(ConfigError, match="unit 99 out of range"):
        unit_selectivity.run_experiment(config.__class__(outdir=str(tmp_path), units=(sand, 99)),
                                        model=planted_model(), source=EncodedScenes(size=16))


def test_zero_or_more_value_flags_come_from_the_config_too():
    """--units (unit_selectivity) and --curve-classes (intervene_classifier) take zero or more values
    (nargs="*" in the config field's option): no value means none, not an error."""
    sel = script("unit_selectivity")
    assert sel.config_from_args(sel.parse_args(["--units", "3", "5", "--outdir", "results"])).units == (3, 5)
    assert sel.config_from_args(sel.parse_args(["--units", "--outdir", "results"])).units == ()
    clf = script("intervene_classifier")
    args = clf.parse_args(["--curve-classes", "--outdir", "results"])
    assert args.curve_classes == []
    args = clf.parse_args(["--curve-classes", "street", "lake", "--outdir", "results"])
    assert args.curve_classes == ["street", "lake"]
