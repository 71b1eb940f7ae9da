"""scripts/dissect.py: every flag is validated up front (exit code 2, a one-line message naming
the flag, no traceback, nothing written), --help shows every default, the exit codes hold."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import dissect as dissect_script  # noqa: E402


def run_main(argv, capsys):
    code = dissect_script.main(argv)
    err = capsys.readouterr().err
    return code, err


BAD = [
    (["--quantile", "2"], "--quantile"),
    (["--quantile", "nan"], "--quantile"),
    (["--quantile", "0"], "--quantile"),
    (["--miniou", "-1"], "--miniou"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--sample-size", "0"], "--sample-size"),
    (["--thumbsize", "0"], "--thumbsize"),
    (["--topk", "0"], "--topk"),
    (["--resolution", "3"], "--resolution"),
    (["--devices", "0"], "--devices"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--layers", "features.conv9_9"], "--layers"),
    (["--layers", "features.conv4_2", "features.conv4_2"], "--layers"),
    (["--model", "no_such_model"], "no_such_model"),
    (["--dataset", "/no/such/folder"], "--dataset"),
    (["--weights", "/no/such/weights"], "--weights"),
    (["--seg", "netx"], "netx"),
]


@pytest.mark.parametrize("argv,flag", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flags_exit_2_with_a_message_naming_the_flag_and_write_nothing(tmp_path, capsys, argv, flag):
    out = tmp_path / "results"
    code, err = run_main(argv + ["--outdir", str(out), "--no-progress"], capsys)
    assert code == 2, err
    assert flag in err and err.startswith("dissect.py: error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_outdir_naming_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    code, err = run_main(["--outdir", str(f)], capsys)
    assert code == 2 and "--outdir" in err and "not a folder" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_outdir_is_refused(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code, err = run_main(["--outdir", str(ro / "results")], capsys)
    assert code == 2 and "--outdir" in err and "permission" in err


def test_argparse_errors_exit_2(capsys):
    assert dissect_script.main(["--batch-size", "ten"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert dissect_script.main(["--cache-dtype", "int8"]) == 2
    assert dissect_script.main(["--label-rule", "vibes"]) == 2
    assert "--label-rule" in capsys.readouterr().err


def test_help_shows_every_flag_with_its_default(capsys):
    assert dissect_script.main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: dissect.py")
    for flag in ("--model", "--dataset", "--seg", "--layers", "--quantile", "--miniou", "--thumbsize", "--outdir",
                 "--sample-size", "--batch-size", "--devices", "--topk", "--resolution", "--weights",
                 "--no-activation-cache", "--cache-dtype", "--overwrite", "--no-progress", "--debug",
                 "--coordinator", "--num-processes", "--process-id", "--distributed-auto"):
        assert flag in text, flag
    assert "(default: 0.01)" in text and "(default: 10)" in text and "(default: toy_classifier)" in text


def test_debug_shows_the_traceback(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "dissect.py"), "--quantile", "2", "--debug",
                           "--outdir", str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "Traceback" in done.stderr and "--quantile" in done.stderr
    plain = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "dissect.py"), "--quantile", "2",
                            "--outdir", str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert not (tmp_path / "r").exists()


def test_offline_a_missing_download_lists_every_file_the_command_needs(tmp_path, capsys, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("JAXDISSECT_HOME", str(tmp_path / "home"))
    code, err = run_main(["--model", "vgg16_places", "--outdir", str(tmp_path / "r")], capsys)
    assert code == 2 and "Traceback" not in err
    home = tmp_path / "home"
    for path in (home / "downloads" / "vgg16_places365-0bafbc55.pth", home / "downloads" / "places_val.zip",
                 home / "segmodel" / "upp-resnet50-upernet" / "encoder_epoch_40.pth",
                 home / "segmodel" / "upp-resnet50-upernet" / "labels.json",
                 home / "segmodel" / "color-resnet18dilated-ppm_deepsup" / "decoder_epoch_20.pth"):
        assert str(path) in err, path
    assert "--weights" in err and "--dataset FOLDER" in err and "needs 8 file(s)" in err
    # The dataset alone: the message names the zip and the folder alternative, not the weights flags.
    code, err = run_main(["--dataset", "places", "--seg", "toy", "--outdir", str(tmp_path / "r")], capsys)
    assert code == 2 and "places_val.zip" in err and "--dataset FOLDER" in err and "--weights" not in err
    assert not (tmp_path / "r").exists()
