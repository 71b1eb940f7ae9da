"""Smoke runs of the scripts that had none: scripts/intervene_generator.py and every benchmark,
end to end as a user starts them (a fresh process), at tiny sizes. Each must exit 0 and print
the figures it exists for; the numbers themselves are not judged (weights may be retrained).
All but the cheapest are slow tests (each compiles its own programs in a fresh process)."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def run_script(script, args, tmp_path, simulated_devices=None, timeout=900):
    """Run scripts/<script> in a fresh process (cwd tmp_path); returns stdout. The caches go to tmp_path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               JAXDISSECT_HOME=str(tmp_path / "home"))
    env.pop("XLA_FLAGS", None)
    if simulated_devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={simulated_devices}"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "Traceback" not in done.stderr
    return done.stdout


@pytest.mark.slow  # dissects the toy generator first (20 samples), then three passes: ~1 min on 2 cores
def test_intervene_generator_end_to_end(tmp_path):
    out = tmp_path / "results"
    stdout = run_script("intervene_generator.py", [
        "--sample-size", "4", "--insert-sample-size", "2", "--dissect-sample-size", "20", "--batch-size", "2",
        "--max-units", "2", "--insert-units", "2", "--no-single-units", "--min-context-samples", "1",
        "--chunk", "4", "--outdir", str(out), "--no-progress"], tmp_path, simulated_devices=2)
    assert re.search(rf"zeroing the best 2 tree units removes -?{NUMBER}% of tree pixels", stdout), stdout
    assert "inserting 2 tree units" in stdout
    [folder] = [l.split("outputs: ", 1)[1].strip() for l in stdout.splitlines() if l.startswith("outputs: ")]
    tables = json.load(open(os.path.join(folder, "tables.json")))
    curve = tables["removal"]["curve"]
    assert [c["units"] for c in curve] == [0, 1, 2] and curve[0]["removed"] == 0
    assert all(c["removed"] <= 1.0 for c in curve)  # at most all the tree pixels are removed
    for f in ("tables.npz", "removal_tree.png", "context_tree.png"):
        assert os.path.getsize(os.path.join(folder, f)) > 0, f
    assert "Generator interventions" in open(os.path.join(os.path.dirname(folder), "report.html")).read()
    # run again: everything is read back, the same tables come out
    run_script("intervene_generator.py", [
        "--sample-size", "4", "--insert-sample-size", "2", "--dissect-sample-size", "20", "--batch-size", "2",
        "--max-units", "2", "--insert-units", "2", "--no-single-units", "--min-context-samples", "1",
        "--chunk", "4", "--outdir", str(out), "--no-progress"], tmp_path, simulated_devices=2)
    assert json.load(open(os.path.join(folder, "tables.json")))["removal"] == tables["removal"]


def test_bench_ablation_smoke(tmp_path):  # about 6 s of CPU
    stdout = run_script("bench_ablation.py", ["--sample-size", "4", "--batch-size", "2", "--mask-chunk", "32",
                                              "--repeats", "1"], tmp_path)
    assert "toy_classifier (trained weights) features.conv4_2: 128 units, 4 images" in stdout
    assert re.search(rf"ratio sweep / \(units x forward\): +{NUMBER}", stdout), stdout


@pytest.mark.slow
def test_bench_attacks_smoke(tmp_path):
    stdout = run_script("bench_attacks.py", ["--batch", "2", "--cw-steps", "2", "--binary-steps", "1",
                                             "--pgd-steps", "2", "--repeats", "1"], tmp_path)
    results = json.loads(stdout.strip().splitlines()[-1])
    assert set(results) == {"cw_l2", "pgd_l2", "pgd_linf"}
    assert results["cw_l2"]["steps_per_image"] == 2 and results["pgd_l2"]["steps_per_image"] == 2
    assert all(r["images_per_s"] > 0 and 0 <= r["success_rate"] <= 1 for r in results.values())


@pytest.mark.slow
def test_bench_dissect_smoke(tmp_path):
    stdout = run_script("bench_dissect.py", ["--sample-size", "4", "--batch-size", "2", "--repeats", "1"], tmp_path)
    assert "toy_classifier features.conv4_2 on 4 samples (scenes, seg scenes)" in stdout
    assert re.search(rf"dissection end to end: +{NUMBER} s = {NUMBER} forward passes \(goal <= 1.3\)", stdout), stdout
    assert re.search(rf"second dissection \(features.conv4_1, segmentations cached\): +{NUMBER} s", stdout), stdout


@pytest.mark.slow
def test_bench_generator_intervention_smoke(tmp_path):
    stdout = run_script("bench_generator_intervention.py", ["--samples", "2", "--batch-size", "2", "--chunk", "8",
                                                            "--units", "2"], tmp_path)
    assert re.search(rf"insertion experiment: +{NUMBER} s", stdout) and "ratio experiment / bare" in stdout, stdout


@pytest.mark.slow  # converts a random VGG16 (a 0.5 GB .pth) and runs it in JAX and torch
def test_bench_models_smoke(tmp_path):
    stdout = run_script("bench_models.py", ["--batch", "1", "--repeats", "1"], tmp_path)
    err = float(re.search(r"max \|jax - torch\| / max \|torch\| = ([0-9.e+-]+)", stdout).group(1))
    assert err < 1e-3, stdout  # the same weights give the same output
    assert stdout.count("img/s") == 3


@pytest.mark.slow
def test_bench_scaling_smoke(tmp_path):
    stdout = run_script("bench_scaling.py", ["--batch-per-device", "1", "--steps", "1", "--simulate", "2"], tmp_path)
    assert stdout.startswith("2 x ")  # --simulate made two devices
    assert "1 device(s):" in stdout and "2 device(s):" in stdout


@pytest.mark.slow
def test_bench_segmenter_smoke(tmp_path):
    stdout = run_script("bench_segmenter.py", ["--batch", "1", "--iters", "1", "--size", "64", "--threads", "1"],
                        tmp_path)
    assert "UPP segmenter, 1 images of 64x64" in stdout and stdout.count("images/s") == 4
    agree = float(re.search(rf"label maps agree on ({NUMBER})% of entries", stdout).group(1))
    assert agree > 99.0, stdout  # the port and the reference on the same random weights


@pytest.mark.slow
def test_bench_stats_smoke(tmp_path):
    stdout = run_script("bench_stats.py", ["--repeats", "1", "--batch", "1", "--accuracy-n", "2000",
                                           "--num-labels", "10", "--resolution", "16"], tmp_path)
    assert "QuantileSketch.update 3,136 x 512 (resolution 16)" in stdout
    assert "rank error" in stdout and "state size:" in stdout
