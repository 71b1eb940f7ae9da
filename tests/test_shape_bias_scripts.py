"""The command lines of the shape-bias and unit-selectivity analyses: user mistakes exit 2 with a
one-line message naming the flag or file."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, message", [
    (["--quantile", "2"], "--quantile must lie in (0, 1)"),
    (["--dataset", "no/such/folder"], "needs --paired-dataset"),
    (["--paired-dataset", "scenes"], "pairs with a stylized scenes world"),
    (["--dataset", "scenes-stylized"], "give the original world first"),
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
    (["--top-units", "-1"], "--top-units must be >= 0"),
])
def test_unit_selectivity_bad_input_exits_2(argv, message, capsys, tmp_path):
    argv = argv + ["--sample-size", "8", "--outdir", str(tmp_path), "--no-progress"]
    assert script("unit_selectivity").main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("unit_selectivity.py: error:") and message in err


def test_unit_selectivity_with_nothing_to_plot_says_how(capsys, tmp_path):
    assert script("unit_selectivity").main(["--outdir", str(tmp_path), "--sample-size", "8"]) == 2
    assert "give --units, or run scripts/intervene_classifier.py" in capsys.readouterr().err
