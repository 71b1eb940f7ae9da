"""Dissection as 2 processes x 2 CPU devices (jax.distributed on 127.0.0.1) equals one process,
a killed multi-process run resumes on a different device count with the same results, and the
generator, adversarial and shape-bias experiments split over processes equal one process."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.slow  # three multi-process launches: about two minutes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc, devices_each, outdir, arg, results, timeout=600, worker="multiprocess_worker.py"):
    """Run `worker` as nproc processes of devices_each CPU devices; `arg` is the worker's own
    argument (the dissection worker's kill_at, the experiment worker's experiment name)."""
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices_each), XLA_FLAGS="", JAX_PLATFORMS="cpu",
               PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    port = free_port()
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, worker), str(port), str(i), str(nproc),
                               str(outdir), str(arg), str(results[i])], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(nproc)]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outs.append((p.returncode, out))
    return outs


def load(path):
    with np.load(path) as z:
        return {k: z[k] for k in z}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    [(rc, out)] = launch(1, 1, d / "out", -1, [d / "r.npz"])
    assert rc == 0, out
    return load(d / "r.npz")


def assert_same(a, b):
    np.testing.assert_array_equal(a["best"], b["best"])
    np.testing.assert_allclose(a["iou"], b["iou"], atol=1e-6)
    np.testing.assert_array_equal(a["thr"], b["thr"])
    np.testing.assert_array_equal(a["top"], b["top"])


def test_two_processes_two_devices_each_equal_one_device(reference, tmp_path):
    outs = launch(2, 2, tmp_path / "out", -1, [tmp_path / "p0.npz", tmp_path / "p1.npz"])
    for rc, out in outs:
        assert rc == 0, out
    for p in ("p0.npz", "p1.npz"):  # every process returns the merged result
        assert_same(load(tmp_path / p), reference)
    written = os.listdir(tmp_path / "out")
    assert written == ["planted-scenes-scenes-planted-500-t32"]


def test_killed_multiprocess_run_resumes_on_another_device_count(reference, tmp_path):
    outs = launch(2, 2, tmp_path / "out", 33, [tmp_path / "p0.npz", tmp_path / "p1.npz"])
    assert all(rc != 0 for rc, _ in outs), outs  # both processes died mid-run
    ckpt = tmp_path / "out" / "planted-scenes-scenes-planted-500-t32" / "checkpoints" / "activations"
    assert ckpt.exists()
    [(rc, out)] = launch(1, 3, tmp_path / "out", -1, [tmp_path / "resumed.npz"])
    assert rc == 0, out
    assert_same(load(tmp_path / "resumed.npz"), reference)


def test_multiprocess_run_killed_in_the_iou_pass_resumes(reference, tmp_path):
    """The later passes read the caches each process wrote; a kill there resumes too."""
    # 40 samples in global batches of 8, a checkpoint every 2 batches: the kill at the batch
    # holding sample 24 (the fourth) comes after the IoU pass saved samples 0-15.
    outs = launch(2, 2, tmp_path / "out", "iou:24", [tmp_path / "p0.npz", tmp_path / "p1.npz"])
    assert all(rc != 0 for rc, _ in outs), outs
    d = tmp_path / "out" / "planted-scenes-scenes-planted-500-t32"
    assert (d / "checkpoints" / "iou").exists() and (d / "stats" / "activations").exists()
    outs = launch(2, 2, tmp_path / "out", -1, [tmp_path / "p0.npz", tmp_path / "p1.npz"])
    for rc, out in outs:
        assert rc == 0, out
    for p in ("p0.npz", "p1.npz"):
        assert_same(load(tmp_path / p), reference)


def one_and_two_processes(tmp_path, experiment):
    """(one process x one device result, [the result of each of 2 processes x 2 devices])."""
    worker = "multiprocess_experiment_worker.py"
    [(rc, out)] = launch(1, 1, tmp_path / "one", experiment, [tmp_path / "one.npz"], worker=worker)
    assert rc == 0, out
    outs = launch(2, 2, tmp_path / "two", experiment, [tmp_path / "p0.npz", tmp_path / "p1.npz"], worker=worker)
    for rc, out in outs:
        assert rc == 0, out
    return load(tmp_path / "one.npz"), [load(tmp_path / p) for p in ("p0.npz", "p1.npz")]


def test_generator_interventions_on_two_processes_equal_one(tmp_path):
    """The dissection, ablation and insertion passes of the generator experiment split over
    2 processes x 2 devices give the one-device tables on every process."""
    one, twos = one_and_two_processes(tmp_path, "generator")
    assert one["removed"][1] == pytest.approx(1.0)  # the run is the meaningful one of the slow test
    for two in twos:
        assert set(two) == set(one)
        for k in one:
            np.testing.assert_allclose(two[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))


def test_adversarial_experiment_on_two_processes_equals_one(tmp_path):
    """Ranking, image selection and attacks split over 2 processes x 2 devices give the
    one-device results; only process 0 writes the folder."""
    one, twos = one_and_two_processes(tmp_path, "adversarial")
    for two in twos:
        assert set(two) == set(one)
        for k in one:
            if k.endswith((".l2", ".peak_adv")):
                np.testing.assert_allclose(two[k], one[k], rtol=1e-4, atol=1e-4, err_msg=k)
            else:
                np.testing.assert_array_equal(two[k], one[k], err_msg=k)
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))


def test_shape_bias_on_two_processes_equals_one(tmp_path):
    """Both passes of the shape-bias experiment (thresholds on each set; labels, mask agreement and
    the surface labels' confinement) split over 2 processes x 2 devices give the one-device
    results on every process; only process 0 writes the folder."""
    one, twos = one_and_two_processes(tmp_path, "shape_bias")
    assert np.isfinite(one["share"]).sum() > 10 and (one["features.conv4_2.agreement"] > 0).sum() > 10
    for two in twos:
        assert set(two) == set(one)
        for k in one:
            if k.endswith(("ious0", "ious1")):
                np.testing.assert_allclose(two[k], one[k], rtol=1e-6, err_msg=k)
            else:
                np.testing.assert_array_equal(two[k], one[k], err_msg=k)
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))
