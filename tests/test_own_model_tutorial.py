"""The 'dissect your own model' tutorial (docs/own_model.md) runs as written."""
import os
import pathlib
import re
import sys

import numpy as np

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "own_model.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_tutorial_runs_as_written(tmp_path, monkeypatch, capsys):
    module_code, script = python_blocks(DOC.read_text())
    assert module_code.startswith("# mymodel.py\n")
    assert len(module_code.splitlines()) + len(script.splitlines()) <= 30
    (tmp_path / "mymodel.py").write_text(module_code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mymodel", None)
    namespace: dict = {}
    exec(compile(script, str(DOC), "exec"), namespace)
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
