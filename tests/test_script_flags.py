"""Every flag of the experiment, training and benchmark scripts is checked before any work: a bad
value exits 2 with one line naming the flag (no traceback unless --debug), and nothing is written.
`--help` gives every flag a help text and shows its default.

Each bad case runs the script's main in this process (cheap: the check comes before any work);
one case per script also runs as a real subprocess, the way a user starts it."""
import argparse
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxdissect import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
_LOADED = {}


def load(script):
    """The script as a module (scripts/ is not a package)."""
    if script not in _LOADED:
        if SCRIPTS not in sys.path:
            sys.path.insert(0, SCRIPTS)  # for bench_common, as when run
        spec = importlib.util.spec_from_file_location(script[:-3].replace("-", "_") + "_under_test",
                                                      os.path.join(SCRIPTS, script))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        _LOADED[script] = module
    return _LOADED[script]


def _ranking_junk(tmp):
    path = os.path.join(tmp, "junk.npz")
    with open(path, "wb") as f:
        f.write(b"not an npz")
    return path


def _data_folder_without_val(tmp):
    path = os.path.join(tmp, "data")
    os.makedirs(os.path.join(path, "train", "a"))
    return path


# (script, argv, the flag the message must name); "{out}" is the output folder, "{tmp}" a
# scratch folder outside it; helpers make inputs in {tmp}.
EXPERIMENT_CASES = [
    # your own model (package.module:factory): loaded up front, its problems named
    ("intervene_classifier.py", ["--model", "no_such_package.models:make"], "--model"),
    ("adversarial.py", ["--model", "jaxdissect.models.toy:NOT_THERE"], "--model"),
    ("intervene_generator.py", ["--model", "no_such_package:make"], "--model"),
    ("intervene_classifier.py", ["--input-size", "64"], "--input-size"),  # for a registered model
    ("intervene_classifier.py", ["--ns", "-3"], "--ns"),  # was: "min() arg is an empty sequence"
    ("intervene_classifier.py", ["--ns", "500"], "--ns"),  # the toy layer has 128 units
    ("intervene_classifier.py", ["--ns", "two"], "--ns"),
    ("intervene_classifier.py", ["--train-size", "0"], "--train-size"),
    ("intervene_classifier.py", ["--val-size", "-5"], "--val-size"),
    ("intervene_classifier.py", ["--batch-size", "0"], "--batch-size"),
    ("intervene_classifier.py", ["--mask-chunk", "0"], "--mask-chunk"),
    ("intervene_classifier.py", ["--random-draws", "0"], "--random-draws"),
    ("intervene_classifier.py", ["--distribution-n", "0"], "--distribution-n"),
    ("intervene_classifier.py", ["--seed", "-1"], "--seed"),
    ("intervene_classifier.py", ["--dissection-sample-size", "0"], "--dissection-sample-size"),
    ("intervene_classifier.py", ["--devices", "0"], "--devices"),
    ("intervene_classifier.py", ["--devices", "99"], "--devices"),
    ("intervene_classifier.py", ["--model", "nope"], "--model"),
    ("intervene_classifier.py", ["--model", "toy_generator"], "--model"),
    ("intervene_classifier.py", ["--layer", "conv9_9"], "--layer"),
    ("intervene_classifier.py", ["--dataset", "{tmp}/missing"], "--dataset"),
    ("intervene_classifier.py", ["--dataset", _data_folder_without_val], "--dataset"),
    ("intervene_classifier.py", ["--dataset", "tfds:"], "--dataset"),
    ("intervene_classifier.py", ["--seg", "nets"], "--seg"),
    ("intervene_classifier.py", ["--seg", "scenes", "--dataset", "places"], "--seg"),
    ("intervene_classifier.py", ["--curve-classes", "no_such_class"], "--curve-classes"),
    ("intervene_classifier.py", ["--curve-classes", "99"], "--curve-classes"),
    ("intervene_classifier.py", ["--weights", "{tmp}/missing"], "--weights"),
    ("intervene_classifier.py", ["--outdir", "{tmp}/file/sub"], "--outdir"),
    ("intervene_classifier.py", ["--process-id", "2", "--num-processes", "2"], "--process-id"),
    ("intervene_classifier.py", ["--num-processes", "0"], "--num-processes"),
    ("intervene_classifier.py", ["--coordinator", "nohostport"], "--coordinator"),
    ("intervene_classifier.py", ["--val", "5"], "--val"),  # abbreviations are not guessed
    ("adversarial.py", ["--images-per-target", "0"], "--images-per-target"),
    ("adversarial.py", ["--attack", "fgsm"], "--attack"),
    ("adversarial.py", ["--steps", "0"], "--steps"),
    ("adversarial.py", ["--binary-search-steps", "-1"], "--binary-search-steps"),
    ("adversarial.py", ["--learning-rate", "0"], "--learning-rate"),
    ("adversarial.py", ["--learning-rate", "nan"], "--learning-rate"),
    ("adversarial.py", ["--initial-const", "-1"], "--initial-const"),
    ("adversarial.py", ["--confidence", "-0.5"], "--confidence"),
    ("adversarial.py", ["--epsilon", "0.1"], "--epsilon"),  # a PGD flag with the CW attack
    ("adversarial.py", ["--attack", "pgd_l2", "--no-abort-early"], "--no-abort-early"),
    ("adversarial.py", ["--attack", "pgd_linf", "--epsilon", "3"], "--epsilon"),
    ("adversarial.py", ["--attack", "pgd_l2", "--rel-stepsize", "0"], "--rel-stepsize"),
    ("adversarial.py", ["--examples", "-1"], "--examples"),
    ("adversarial.py", ["--delta-threshold", "0"], "--delta-threshold"),
    ("adversarial.py", ["--train-size", "0"], "--train-size"),
    ("adversarial.py", ["--val-size", "0"], "--val-size"),
    ("adversarial.py", ["--batch-size", "0"], "--batch-size"),
    ("adversarial.py", ["--seed", "-2"], "--seed"),
    ("adversarial.py", ["--devices", "99"], "--devices"),
    ("adversarial.py", ["--model", "toy_segmenter"], "--model"),
    ("adversarial.py", ["--layer", "nope"], "--layer"),
    ("adversarial.py", ["--dataset", "{tmp}/missing"], "--dataset"),
    ("adversarial.py", ["--targets", "no_such_class"], "--targets"),
    ("adversarial.py", ["--ranking-file", "{tmp}/missing.npz"], "--ranking-file"),
    ("adversarial.py", ["--ranking-file", _ranking_junk], "--ranking-file"),
    ("adversarial.py", ["--weights", "{tmp}/missing"], "--weights"),
    ("adversarial.py", ["--outdir", "{tmp}/file"], "--outdir"),
    ("intervene_generator.py", ["--model", "toy_classifier"], "--model"),
    ("intervene_generator.py", ["--layer", "layer99"], "--layer"),
    ("intervene_generator.py", ["--seg", "scenes"], "--seg"),
    ("intervene_generator.py", ["--remove-class", "no_such_class"], "--remove-class"),
    ("intervene_generator.py", ["--insert-class", "no_such_class"], "--insert-class"),
    ("intervene_generator.py", ["--sample-size", "0"], "--sample-size"),
    ("intervene_generator.py", ["--insert-sample-size", "0"], "--insert-sample-size"),
    ("intervene_generator.py", ["--dissect-sample-size", "-1"], "--dissect-sample-size"),
    ("intervene_generator.py", ["--max-units", "0"], "--max-units"),
    ("intervene_generator.py", ["--insert-units", "0"], "--insert-units"),
    ("intervene_generator.py", ["--quantile", "0"], "--quantile"),
    ("intervene_generator.py", ["--quantile", "1.5"], "--quantile"),
    ("intervene_generator.py", ["--batch-size", "0"], "--batch-size"),
    ("intervene_generator.py", ["--chunk", "0"], "--chunk"),
    ("intervene_generator.py", ["--devices", "99"], "--devices"),
    ("intervene_generator.py", ["--min-context-samples", "-1"], "--min-context-samples"),
    ("intervene_generator.py", ["--weights", "{tmp}/missing"], "--weights"),
    ("intervene_generator.py", ["--outdir", "{tmp}/file"], "--outdir"),
    ("shape_bias.py", ["--model", "toy_generator"], "--model"),
    ("shape_bias.py", ["--layers", "conv9_9"], "--layers"),
    ("shape_bias.py", ["--quantile", "1"], "--quantile"),
    ("shape_bias.py", ["--miniou", "-0.1"], "--miniou"),
    ("shape_bias.py", ["--sample-size", "0"], "--sample-size"),
    ("shape_bias.py", ["--batch-size", "0"], "--batch-size"),
    ("shape_bias.py", ["--seg", "nets"], "--seg"),
    ("shape_bias.py", ["--devices", "99"], "--devices"),
    ("shape_bias.py", ["--weights", "{tmp}/missing"], "--weights"),
    ("shape_bias.py", ["--outdir", "{tmp}/file"], "--outdir"),
    ("unit_selectivity.py", ["--model", "toy_generator"], "--model"),
    ("unit_selectivity.py", ["--layer", "conv9_9"], "--layer"),
    ("unit_selectivity.py", ["--units", "999"], "--units"),
    ("unit_selectivity.py", ["--top-units", "-1"], "--top-units"),
    ("unit_selectivity.py", ["--max-classes", "0"], "--max-classes"),
    ("unit_selectivity.py", ["--sample-size", "0"], "--sample-size"),
    ("unit_selectivity.py", ["--dataset", "{tmp}/missing"], "--dataset"),
    ("unit_selectivity.py", ["--weights", "{tmp}/missing"], "--weights"),
    ("unit_selectivity.py", ["--outdir", "{tmp}/file"], "--outdir"),
]
OUTDIR_FLAG = {"intervene_classifier.py": "--outdir", "adversarial.py": "--outdir",
               "intervene_generator.py": "--outdir", "shape_bias.py": "--outdir", "unit_selectivity.py": "--outdir"}

TRAIN_CASES = [
    (["gan"], "which"),
    (["classifier", "--steps", "0"], "--steps"),
    (["classifier", "--batch", "-1"], "--batch"),
    (["classifier", "--lr", "0"], "--lr"),
    (["classifier", "--lr", "inf"], "--lr"),
    (["classifier", "--train-size", "0"], "--train-size"),
    (["classifier", "--val-size", "0"], "--val-size"),
    (["classifier", "--seed", "-1"], "--seed"),
    (["segmenter", "--crop", "60"], "--crop"),
    (["segmenter", "--crop", "256"], "--crop"),
    (["generator", "--sigma", "0"], "--sigma"),
    (["classifier-head", "--l1", "-1"], "--l1"),
    (["generator", "--aux-weight", "-1"], "--aux-weight"),
    (["classifier", "--sigma", "0.3"], "--sigma"),  # a generator flag would be ignored
    (["generator", "--crop", "32"], "--crop"),
    (["segmenter", "--l1", "0.1"], "--l1"),
    (["segmenter", "--balance", "-0.5"], "--balance"),
    (["segmenter", "--prior-correction", "nan"], "--prior-correction"),
    (["classifier", "--balance", "0.5"], "--balance"),  # a segmenter flag would be ignored
    (["generator", "--prior-correction", "0.75"], "--prior-correction"),
    (["classifier-head", "--measure-only"], "--measure-only"),
    (["classifier", "--out", "{tmp}/file"], "--out"),
    (["classifier", "--cache", "{tmp}/file/x"], "--cache"),
]

BENCH_CASES = [
    ("bench_ablation.py", ["--model", "toy_generator"], "--model"),
    ("bench_ablation.py", ["--layer", "nope"], "--layer"),
    ("bench_ablation.py", ["--weights", "{tmp}/missing"], "--weights"),
    ("bench_ablation.py", ["--sample-size", "0"], "--sample-size"),
    ("bench_ablation.py", ["--batch-size", "0"], "--batch-size"),
    ("bench_ablation.py", ["--mask-chunk", "0"], "--mask-chunk"),
    ("bench_ablation.py", ["--devices", "99"], "--devices"),
    ("bench_ablation.py", ["--repeats", "0"], "--repeats"),
    ("bench_attacks.py", ["--model", "nope"], "--model"),
    ("bench_attacks.py", ["--batch", "0"], "--batch"),
    ("bench_attacks.py", ["--cw-steps", "0"], "--cw-steps"),
    ("bench_attacks.py", ["--binary-steps", "0"], "--binary-steps"),
    ("bench_attacks.py", ["--pgd-steps", "0"], "--pgd-steps"),
    ("bench_attacks.py", ["--repeats", "0"], "--repeats"),
    ("bench_attacks.py", ["--devices", "99"], "--devices"),
    ("bench_dissect.py", ["--model", "upp_segmenter"], "--model"),
    ("bench_dissect.py", ["--dataset", "{tmp}/missing"], "--dataset"),
    ("bench_dissect.py", ["--seg", "random-netx"], "--seg"),
    ("bench_dissect.py", ["--seg", "scenes", "--dataset", "places"], "--seg"),
    ("bench_dissect.py", ["--sample-size", "0"], "--sample-size"),
    ("bench_dissect.py", ["--batch-size", "0"], "--batch-size"),
    ("bench_dissect.py", ["--repeats", "0"], "--repeats"),
    ("bench_generator_intervention.py", ["--model", "toy_classifier"], "--model"),
    ("bench_generator_intervention.py", ["--layer", "nope"], "--layer"),
    ("bench_generator_intervention.py", ["--seg", "nope"], "--seg"),
    ("bench_generator_intervention.py", ["--samples", "0"], "--samples"),
    ("bench_generator_intervention.py", ["--batch-size", "0"], "--batch-size"),
    ("bench_generator_intervention.py", ["--chunk", "0"], "--chunk"),
    ("bench_generator_intervention.py", ["--units", "0"], "--units"),
    ("bench_generator_intervention.py", ["--devices", "99"], "--devices"),
    ("bench_models.py", ["--batch", "0"], "--batch"),
    ("bench_models.py", ["--repeats", "-1"], "--repeats"),
    ("bench_scaling.py", ["--model", "toy_generator"], "--model"),
    ("bench_scaling.py", ["--batch-per-device", "0"], "--batch-per-device"),
    ("bench_scaling.py", ["--steps", "0"], "--steps"),
    ("bench_scaling.py", ["--simulate", "0"], "--simulate"),
    ("bench_segmenter.py", ["--batch", "0"], "--batch"),
    ("bench_segmenter.py", ["--iters", "0"], "--iters"),
    ("bench_segmenter.py", ["--threads", "0"], "--threads"),
    ("bench_segmenter.py", ["--size", "100"], "--size"),
    ("bench_stats.py", ["--repeats", "0"], "--repeats"),
    ("bench_stats.py", ["--resolution", "100"], "--resolution"),
    ("bench_stats.py", ["--num-labels", "1"], "--num-labels"),
    ("bench_stats.py", ["--accuracy-n", "3"], "--accuracy-n"),
    ("bench_stats.py", ["--batch", "0"], "--batch"),
]
ALL_SCRIPTS = sorted({c[0] for c in EXPERIMENT_CASES + BENCH_CASES} | {"train_toy.py"})


def _case_id(value):
    if isinstance(value, list):
        return " ".join(getattr(a, "__name__", a) for a in value)
    return None


def _argv(argv, tmp):
    out = []
    for a in argv:
        out.append(a(tmp) if callable(a) else a.format(tmp=tmp))
    return out


@pytest.fixture
def places(tmp_path):
    """(scratch folder with a plain file 'file' in it, empty output folder)."""
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    scratch.mkdir()
    (scratch / "file").write_text("a file, not a folder")
    return str(scratch), str(out)


def _check_refused(rc, err, flag, out):
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0, err  # one line
    assert flag in err, err
    assert not os.path.exists(out) or os.listdir(out) == []  # nothing written


@pytest.mark.parametrize("script,argv,flag", EXPERIMENT_CASES, ids=_case_id)
def test_experiment_script_refuses_bad_flag(script, argv, flag, places, capsys):
    scratch, out = places
    argv = _argv(argv, scratch)
    if OUTDIR_FLAG[script] not in argv:
        argv += [OUTDIR_FLAG[script], out]
    rc = load(script).main(argv + ["--no-progress"])
    _check_refused(rc, capsys.readouterr().err, flag, out)


@pytest.mark.parametrize("argv,flag", TRAIN_CASES, ids=_case_id)
def test_train_toy_refuses_bad_flag(argv, flag, places, capsys):
    scratch, out = places
    argv = _argv(argv, scratch)
    if "--out" not in argv:
        argv += ["--out", out]
    rc = load("train_toy.py").main(argv)
    _check_refused(rc, capsys.readouterr().err, flag, out)


@pytest.mark.parametrize("script,argv,flag", BENCH_CASES, ids=_case_id)
def test_bench_script_refuses_bad_flag(script, argv, flag, places, capsys):
    scratch, out = places
    rc = load(script).main(_argv(argv, scratch))
    _check_refused(rc, capsys.readouterr().err, flag, out)


def test_every_flag_of_every_script_has_help_and_its_default(monkeypatch, capsys):
    parsers = []
    original = cli.ArgumentParser.parse_args

    def recording(self, *a, **k):
        parsers.append(self)
        return original(self, *a, **k)

    monkeypatch.setattr(cli.ArgumentParser, "parse_args", recording)
    for script in ALL_SCRIPTS:
        parsers.clear()
        assert load(script).main(["--help"]) == 0
        text = capsys.readouterr().out
        [parser] = parsers
        assert isinstance(parser.formatter_class(prog="x"), argparse.ArgumentDefaultsHelpFormatter)
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            name = action.option_strings[0] if action.option_strings else action.dest
            assert action.help, f"{script} {name} has no help"
            if action.default not in (None, False) and not isinstance(action.default, bool):
                assert "default" in formatter._get_help_string(action), f"{script} {name}: default not shown"
        assert "--debug" in text and "(default: " in text


def test_debug_shows_the_traceback_of_a_run_error(places, capsys):
    scratch, out = places
    script = load("intervene_classifier.py")
    with pytest.raises(cli.ConfigError, match="curve_classes"):
        script.main(["--curve-classes", "no_such_class", "--outdir", out, "--debug"])


def test_user_errors_during_the_run_are_one_line(capsys):
    def boom(args):
        raise FileNotFoundError("no such file: 'x.jpg'")

    assert cli.run_script("p.py", lambda argv: argparse.Namespace(debug=False), boom) == 2
    err = capsys.readouterr().err
    assert err == "p.py: error: no such file: 'x.jpg' (--debug shows the traceback)\n"
    assert cli.run_script("p.py", lambda argv: argparse.Namespace(debug=False),
                          lambda a: (_ for _ in ()).throw(KeyError("unknown label 'z'"))) == 2
    assert "unknown label 'z'" in capsys.readouterr().err
    assert cli.run_script("p.py", lambda argv: argparse.Namespace(debug=False),
                          lambda a: (_ for _ in ()).throw(cli.RunLockedError("held"))) == 3
    with pytest.raises(ZeroDivisionError):  # a bug is not a user error: it keeps its traceback
        cli.run_script("p.py", lambda argv: argparse.Namespace(debug=False), lambda a: 1 / 0)


def test_number_types_name_what_they_accept():
    assert cli.positive_int("3") == 3 and cli.open_unit_float("0.5") == 0.5
    for parse, text, allowed in [(cli.positive_int, "0", "an integer >= 1"), (cli.positive_int, "1.5", ">= 1"),
                                 (cli.open_unit_float, "1", "> 0 and < 1"), (cli.positive_float, "nan", "> 0"),
                                 (cli.int_multiple_of(8, 8, 128), "12", "a multiple of 8 from 8 to 128"),
                                 (cli.power_of_two(1, 64), "48", "a power of two")]:
        with pytest.raises(argparse.ArgumentTypeError, match=allowed):
            parse(text)


# One case per script, run as a user runs it: a fresh process, the exit code, stderr.
SUBPROCESS_CASES = [
    ("intervene_classifier.py", ["--ns", "-3"], "--ns"),
    ("intervene_generator.py", ["--quantile", "2"], "--quantile"),
    ("adversarial.py", ["--attack", "pgd_linf", "--learning-rate", "0.1"], "--learning-rate"),
    ("shape_bias.py", ["--quantile", "2"], "--quantile"),
    ("unit_selectivity.py", ["--max-classes", "0"], "--max-classes"),
    ("train_toy.py", ["segmenter", "--crop", "7"], "--crop"),
    ("bench_ablation.py", ["--sample-size", "0"], "--sample-size"),
    ("bench_attacks.py", ["--batch", "x"], "--batch"),
    ("bench_dissect.py", ["--repeats", "0"], "--repeats"),
    ("bench_generator_intervention.py", ["--units", "-1"], "--units"),
    ("bench_models.py", ["--batch", "0"], "--batch"),
    ("bench_scaling.py", ["--steps", "0"], "--steps"),
    ("bench_segmenter.py", ["--iters", "0"], "--iters"),
    ("bench_stats.py", ["--resolution", "3"], "--resolution"),
]


def _run_as_processes(cases, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    procs = []
    for script, argv, flag in cases:
        out = tmp_path / script
        extra = {"train_toy.py": ["--out", str(out)]}.get(script, ["--outdir", str(out)] if script in OUTDIR_FLAG else [])
        procs.append((flag, out, subprocess.Popen([sys.executable, os.path.join(SCRIPTS, script), *argv, *extra],
                                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True)))
    for flag, out, p in procs:
        stdout, stderr = p.communicate(timeout=300)
        _check_refused(p.returncode, stderr, flag, str(out))
        assert stdout == ""
    assert sorted(os.listdir(tmp_path)) == []  # nothing written in the working folder either


def test_the_known_case_refuses_as_a_process(tmp_path):
    _run_as_processes(SUBPROCESS_CASES[:1], tmp_path)  # was a traceback: "min() arg is an empty sequence"


@pytest.mark.slow  # a dozen fresh processes importing JAX (and torch): about a minute on 2 cores
def test_every_script_refuses_a_bad_flag_as_a_process(tmp_path):
    assert sorted(c[0] for c in SUBPROCESS_CASES) == ALL_SCRIPTS
    _run_as_processes(SUBPROCESS_CASES, tmp_path)


def test_ns_out_of_the_layer_are_never_dropped_silently():
    from jaxdissect.experiments.classifier_ablation import DEFAULT_NS, experiment_ns

    assert experiment_ns(DEFAULT_NS, 128, "l") == (1, 2, 3, 4, 5, 20, 64)  # the defaults fit the layer quietly
    assert experiment_ns((3, 1), 128, "l") == (1, 3)
    with pytest.warns(UserWarning, match="ns 128 left out: N must be from 1 to 127"):
        assert experiment_ns((3, 128), 128, "l") == (3,)
    with pytest.raises(cli.ConfigError, match="from 1 to 127") as e:  # was: min() arg is an empty sequence
        experiment_ns((128, 500), 128, "l")
    assert e.value.flag == "--ns"
    assert cli.spec_layer_units(cli.get_spec("toy_classifier"), "features.conv4_2") == 128
