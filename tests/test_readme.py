"""The README's commands and snippets run as written: every Python snippet is executed (a block
starting with '# NAME.py' is saved as that file for the blocks after it), and every command
line of a script parses with that script's own flags (running them all would take hours; the
quick start's dissection, the tutorial's command and the experiments have their own tests)."""
import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SCRIPTS = ROOT / "scripts"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_every_python_snippet_runs(tmp_path):
    files, snippets = {}, []
    for code in blocks("python"):
        first = code.splitlines()[0]
        m = re.fullmatch(r"# (\w+\.py)", first)
        if m:
            files[m.group(1)] = code
        else:
            snippets.append(code)
    assert snippets, "no Python snippet found"
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)  # a user's plain machine
    for i, code in enumerate(snippets):
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"README snippet {i} failed:\n{code}\n{done.stderr[-3000:]}"


def command_lines() -> list[list[str]]:
    """The README's `python scripts/X.py ...` and `python -m ...` lines (continuations joined)."""
    out = []
    for block in blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#")[0].strip()
            if "python scripts/" in line or "python -m weight_conversion" in line:
                line = line[line.index("python"):]
                line = line.split("&&")[0].split('"')[0].strip()
                if line:
                    out.append(shlex.split(line))
    return out


def load_script(name: str):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name[:-3] + "_readme_test", SCRIPTS / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


PLACEHOLDERS = ("HOST0:1234", "NAME", "DIR", "FILE", "...")


@pytest.mark.parametrize("argv", command_lines(), ids=lambda a: " ".join(a[1:4]))
def test_every_command_line_parses_with_its_scripts_flags(argv):
    if argv[1] == "-m":
        return  # `python -m weight_conversion ...`: tests/test_convert_cli.py runs it
    script = pathlib.Path(argv[1]).name
    assert (SCRIPTS / script).is_file(), f"README names a script that does not exist: {argv[1]}"
    args = [a for a in argv[2:] if a not in PLACEHOLDERS]
    module = load_script(script)
    if any(a in PLACEHOLDERS for a in argv[2:]) or "--coordinator" in args:
        return  # a template line (a cluster, a folder of yours): its flags exist at least
    parsed = module.parse_args(args)
    assert parsed is not None
