"""The README's 'dissect your own model' tutorial runs as written."""
import os
import pathlib
import re
import sys

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def section(title: str) -> str:
    """The README's section under '## title', up to the next section."""
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


class _Doc:
    def read_text(self):
        return section("Dissect your own model")


DOC = _Doc()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_tutorial_runs_as_written(tmp_path, monkeypatch, capsys):
    module_code, script = python_blocks(DOC.read_text())
    assert module_code.startswith("# mymodel.py\n")
    assert len(module_code.splitlines()) + len(script.splitlines()) <= 30
    (tmp_path / "mymodel.py").write_text(module_code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mymodel", None)
    namespace: dict = {}
    exec(compile(script, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "('conv1', 'conv2')" in printed
    result = namespace["result"]
    assert result.iou.shape[1] == 32 and len(re.findall(r"unit \d: \S+ \(\w+\) IoU \d\.\d{3}", printed)) == 5
    assert os.path.isfile(os.path.join(result.directory, "report.html"))
    assert np.all(result.best_iou >= 0) and result.best_iou.max() > 0.04  # even random units find colors


def test_cli_line_names_the_flags_of_the_lead_cli():
    text = DOC.read_text()
    line = next(l for l in text.splitlines() if l.startswith("python scripts/dissect.py --model mymodel:make_model"))
    for flag in ("--input-size 128", "--normalization imagenet", "--layer conv2"):
        assert flag in line


@pytest.mark.slow
def test_cli_line_runs_as_written(tmp_path):
    """The tutorial's command line, run as a user would from the folder holding mymodel.py."""
    import subprocess

    module_code, _ = python_blocks(DOC.read_text())
    (tmp_path / "mymodel.py").write_text(module_code)
    line = next(l for l in DOC.read_text().splitlines() if l.startswith("python scripts/dissect.py --model mymodel"))
    argv = line.split()[2:] + ["--no-progress", "--outdir", str(tmp_path / "results")]
    root = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, str(root / "scripts" / "dissect.py"), *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "units labelled with IoU > 0.04" in done.stdout
