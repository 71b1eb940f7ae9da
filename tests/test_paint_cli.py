"""scripts/paint.py's command line: every flag documented with its default, and bad flags refused
up front with one line naming the flag and exit code 2 (a traceback only with --debug)."""
import os
import socket
import subprocess
import sys

import pytest

from paint_helpers import ROOT, load_script


@pytest.fixture(scope="module")
def script():
    return load_script()


def run_main(script, argv, capsys):
    """(exit code, stderr lines) of main(argv), whether it returns or exits."""
    try:
        code = script.main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def test_every_flag_has_help_and_shows_its_default(script):
    parser = script.build_parser()
    text = " ".join(parser.format_help().split())
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 14
    for a in flags:
        assert a.help and len(a.help) > 10, a.option_strings
        assert f"(default: {a.default})" in text, (a.option_strings, a.default)
    for flag in ("--port", "--model", "--max-body-mb", "--read-timeout", "--debug", "--no-segmentation"):
        assert flag in text
    assert "(default: 8765)" in text and "(default: toy_generator)" in text and "(default: 4.0)" in text


@pytest.fixture
def busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


BAD = [
    (["--port", "70000"], "--port must lie in 0..65535, got 70000"),
    (["--port", "-1"], "--port must lie in 0..65535, got -1"),
    (["--port", "abc"], "argument --port: invalid int value: 'abc'"),
    (["--model", "nosuch"], "--model: unknown model 'nosuch'; known models:"),
    (["--model", "toy_classifier"], "--model toy_classifier is a classifier; painting needs a generator"),
    (["--layer", "layer99"], "--layer: unknown layer 'layer99' for toy_generator; layers: layer1,"),
    (["--seg", "bogus"], "--seg: unknown segmenter 'bogus' for a generator; known: toy, net"),
    (["--seg", "scenes"], "--seg: unknown segmenter 'scenes' for a generator"),
    (["--units", "0"], "--units must be >= 1, got 0"),
    (["--dissect-sample-size", "0"], "--dissect-sample-size must be >= 1, got 0"),
    (["--max-body-mb", "0"], "--max-body-mb must lie in (0, 1024], got 0"),
    (["--max-body-mb", "nan"], "--max-body-mb must lie in (0, 1024], got nan"),
    (["--read-timeout", "-1"], "--read-timeout must lie in (0, 3600] seconds, got -1"),
    (["--max-strokes", "0"], "--max-strokes must lie in 1..10000, got 0"),
    (["--weights", "/nonexistent/weights"], "--weights /nonexistent/weights: no such file or folder"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flags_exit_2_with_one_line(script, capsys, argv, message):
    code, lines = run_main(script, argv, capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("paint.py: error: ") and message in lines[0], lines


def test_outdir_that_is_a_file_and_a_busy_port(script, capsys, tmp_path, busy_port):
    f = tmp_path / "afile"
    f.write_text("x")
    code, lines = run_main(script, ["--outdir", str(f)], capsys)
    assert code == 2 and lines == [f"paint.py: error: --outdir {f} exists and is not a folder"]
    code, lines = run_main(script, ["--port", str(busy_port)], capsys)
    assert code == 2 and len(lines) == 1 and f"--port {busy_port}: cannot listen on 127.0.0.1:{busy_port}" in lines[0]


def test_debug_shows_the_traceback(script, capsys):
    with pytest.raises(script.UsageError, match="--port must lie in 0..65535"):
        script.main(["--port", "70000", "--debug"])


def test_the_script_process_exits_2_without_a_traceback():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "paint.py"), "--model", "nosuch"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("paint.py: error: --model: unknown model 'nosuch'"), done.stderr
    assert "Traceback" not in done.stderr
