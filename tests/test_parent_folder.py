"""Working from the folder above a clone named `jaxdissect`: that folder then shadows the installed
package as a namespace package (an editable install's finder comes after the path scan), so
nothing may find the shipped weights through `jaxdissect.__file__` (None there). A user's script
and the project's scripts both load the toy models from there."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

LOAD_TOYS = """
from jaxdissect import models
for name in ("toy_classifier", "toy_segmenter", "toy_generator"):
    m = models.load(name)
    print(name, m.kind, len(m.layer_names))
"""


def test_loads_toys_from_the_parent_folder_of_a_clone(tmp_path):
    clone = tmp_path / "jaxdissect"  # what `git clone ... jaxdissect` leaves: no __init__.py at its root
    (clone / "scripts").mkdir(parents=True)
    (clone / "README.md").write_text("a clone's root\n")
    (tmp_path / "my_experiment.py").write_text(LOAD_TOYS)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the installed package, as a user has it
    env.pop("XLA_FLAGS", None)
    probe = subprocess.run([sys.executable, "-c", "import jaxdissect; print(getattr(jaxdissect, '__file__', None))"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    done = subprocess.run([sys.executable, "my_experiment.py"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "toy_classifier classifier" in done.stdout and "toy_generator generator" in done.stdout
    # a project script run from there by path imports the package and validates its flags
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "dissect.py"), "--model", "toy_clasifier"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "toy_classifier" in bad.stderr, bad.stderr[-2000:]
