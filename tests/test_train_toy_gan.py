"""The toy GAN's training code (scripts/train_toy_gan.py) at a tiny size: growing networks keep
the shipped generator's names, a killed run resumes to the same weights, and --ship writes a
toy_generator that loads and reproduces the trained one. (CI never trains the real one.)"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import train_toy_gan as tg  # noqa: E402

from jaxdissect.data.zdataset import standard_z_sample  # noqa: E402
from jaxdissect.models import load, registry  # noqa: E402

CHANNELS = [8, 8, 4]  # 16 px, grown from 8 px
TINY = ["--channels", *map(str, CHANNELS), "--z-dim", "8", "--batch", "4", "--train-size", "16", "--eval-every", "0",
        "--log-every", "1", "--grow-at", "2", "--fade", "2"]


def tiny_scenes(cache, n=16, seed=0):
    """A cache file in place of rendered training scenes (random pixels: nothing is learned)."""
    rng = np.random.default_rng(0)
    os.makedirs(cache, exist_ok=True)
    np.savez(os.path.join(cache, f"gan-scenes-train-street-park-village-{n}-{seed}.npz"),
             image=rng.integers(0, 256, size=(n, 128, 128, 3), dtype=np.uint8))


def test_growing_generator_has_the_toy_generator_names_and_fades():
    toy = registry.get_spec("toy_generator").build({"z_dim": 8, "channels": CHANNELS})
    z = jnp.asarray(standard_z_sample(4, 8))
    full = tg.GrowingGenerator(8, tuple(CHANNELS), fade=True)
    params = full.init(jax.random.key(0), z)["params"]
    shipped = tg.shipped_params(params, CHANNELS)
    want = jax.tree.map(jnp.shape, toy.init(jax.random.key(1), z)["params"])
    assert jax.tree.map(jnp.shape, shipped) == want
    assert set(params) - set(shipped) == {"output_8x8"}  # the half-resolution RGB block, training only
    # alpha 1: exactly the toy generator; alpha 0: the half-resolution generator, enlarged 2x (nearest)
    np.testing.assert_array_equal(np.asarray(full.apply({"params": params}, z, 1.0)),
                                  np.asarray(toy.apply({"params": shipped}, z)))
    half = tg.GrowingGenerator(8, tuple(CHANNELS[:2]))
    low = np.asarray(half.apply({"params": {k: params[k] for k in half.init(jax.random.key(0), z)["params"]}}, z))
    np.testing.assert_allclose(np.asarray(full.apply({"params": params}, z, 0.0)),
                               low.repeat(2, axis=1).repeat(2, axis=2), atol=1e-6)
    a = 0.3
    mixed = np.asarray(full.apply({"params": params}, z, a))
    np.testing.assert_allclose(mixed, a * np.asarray(toy.apply({"params": shipped}, z))
                               + (1 - a) * low.repeat(2, axis=1).repeat(2, axis=2), atol=1e-6)


def test_discriminator_fade_and_graft():
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(8, 16, 16, 3)), jnp.float32)
    d16 = tg.Discriminator(16, fade=True)
    v16 = d16.init(jax.random.key(0), x)
    d8 = tg.Discriminator(8)
    v8 = d8.init(jax.random.key(1), x[:, ::2, ::2])
    assert d16.apply(v16, x, 0.5).shape == (8,)
    # graft: every parameter the smaller network has is carried over, the new ones are kept
    g = tg.graft(v16, v8)
    for name in v8["params"]:
        for a, b in zip(jax.tree.leaves(g["params"][name]), jax.tree.leaves(v8["params"][name])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    new = set(v16["params"]) - set(v8["params"])
    assert new == {"from_rgb_16", "block_16"}
    for name in new:
        for a, b in zip(jax.tree.leaves(g["params"][name]), jax.tree.leaves(v16["params"][name])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # alpha 0: the 16 px network is the 8 px one on the 2x2-averaged image
    low = x.reshape(8, 8, 2, 8, 2, 3).mean((2, 4))
    np.testing.assert_allclose(np.asarray(d16.apply(g, x, 0.0)), np.asarray(d8.apply(v8, low)), atol=1e-5)
    with pytest.raises(ValueError, match="discriminator for 16x16"):
        d16.apply(v16, x[:, :8, :8])


def test_losses_and_r1():
    real, fake = np.asarray([2.0, 0.5, -1.0]), np.asarray([-2.0, 0.0, 1.5])
    sig = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
    want_d = -np.mean(np.log(sig(real))) - np.mean(np.log(1 - sig(fake)))
    assert float(tg.d_logistic_loss(jnp.asarray(real), jnp.asarray(fake))) == pytest.approx(want_d, rel=1e-6)
    assert float(tg.g_logistic_loss(jnp.asarray(fake))) == pytest.approx(-np.mean(np.log(sig(fake))), rel=1e-6)
    # R1 of D(x) = sum(w x) is |w|^2 for every image; of D(x) = sum(x^2) it is mean over images of 4 |x|^2
    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(1, 4, 4, 3)), rng.normal(size=(5, 4, 4, 3))
    lin = tg.r1_penalty(lambda v: (v * jnp.asarray(w, jnp.float32)).sum((1, 2, 3)), jnp.asarray(x, jnp.float32))
    assert float(lin) == pytest.approx(np.sum(w ** 2), rel=1e-5)
    quad = tg.r1_penalty(lambda v: (v * v).sum((1, 2, 3)), jnp.asarray(x, jnp.float32))
    assert float(quad) == pytest.approx(np.mean(4 * np.sum(x ** 2, axis=(1, 2, 3))), rel=1e-5)
    # the EMA decay ramps up: 0.1 at step 0, the set decay later
    assert float(tg.ema_decay(0, 0.999)) == pytest.approx(0.1) and float(tg.ema_decay(10 ** 6, 0.999)) == pytest.approx(0.999)


def test_stage_schedule():
    args = tg.parse_args(TINY + ["--steps", "10"])
    assert [tg.stage_at(args, s) for s in (0, 1, 2, 3, 4)] == [(2, False, 1.0), (2, False, 1.0), (3, True, 0.5),
                                                                (3, True, 1.0), (3, True, 1.0)]
    with pytest.raises(SystemExit):
        tg.parse_args(TINY + ["--steps", "2"])  # grows at or after the end
    # a checkpoint of step 2 (= --grow-at) was saved before growing: it holds the 8 px networks
    assert "layer5" not in tg.template_at(args, 2)["g"] and "layer5" in tg.template_at(args, 3)["g"]


@pytest.mark.slow
def test_resume_gives_the_same_weights_and_ship_reproduces_them(tmp_path, capsys):
    cache = str(tmp_path / "cache")
    tiny_scenes(cache)
    common = TINY + ["--cache", cache]
    whole = tg.train(tg.parse_args(common + ["--steps", "5", "--workdir", str(tmp_path / "a")]))
    tg.train(tg.parse_args(common + ["--steps", "3", "--workdir", str(tmp_path / "b")]))  # stops (is killed) at 3
    resumed = tg.train(tg.parse_args(common + ["--steps", "5", "--workdir", str(tmp_path / "b")]))
    assert "resumed from step 3" in capsys.readouterr().out
    assert int(resumed["state"]["step"]) == 5
    for a, b in zip(jax.tree.leaves(whole["state"]["g_ema"]), jax.tree.leaves(resumed["state"]["g_ema"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    # another setting in the same workdir is refused
    with pytest.raises(SystemExit, match="other settings"):
        tg.train(tg.parse_args(common + ["--steps", "5", "--lr-d", "1e-3", "--workdir", str(tmp_path / "b")]))
    # ship: the toy_generator folder loads through the registry and draws what the EMA generator draws
    out = tmp_path / "weights"
    argv = common + ["--steps", "5", "--workdir", str(tmp_path / "b"), "--ship", "--out", str(out),
                     "--measure-samples", "0"]
    tg.main(argv)
    model = load("toy_generator", weights=str(out / "toy_generator"))
    z = jnp.asarray(standard_z_sample(3, 8))
    want = tg.GrowingGenerator(8, tuple(CHANNELS), fade=True).apply({"params": resumed["state"]["g_ema"]}, z, 1.0)
    np.testing.assert_array_equal(np.asarray(model.module.apply(model.variables, z)), np.asarray(want))
    assert set(model.variables["params"]) == {f"layer{i}" for i in range(1, 7)} | {"output_16x16"}
    entry = json.loads((out / "TRAINING.json").read_text())["generator"]
    assert entry["command"].startswith("python scripts/train_toy_gan.py") and "--cache" not in entry["command"]
    assert entry["hyperparameters"]["grow_at"] == 2 and entry["metrics"]["resolution"] == 16
    assert "a GAN (scripts/train_toy_gan.py) at 16 px" in (out / "TRAINING.md").read_text()
    assert (out / "toy_generator_samples.png").stat().st_size > 0


@pytest.mark.slow
def test_export_and_resume_from_it(tmp_path, capsys):
    """--export writes the workdir's newest state to one folder (read-only on the workdir); a run
    in a fresh workdir with --resume-from continues from its step with equal arrays and ends where
    an uninterrupted run ends."""
    cache = str(tmp_path / "cache")
    tiny_scenes(cache)
    common = TINY + ["--cache", cache]
    whole = tg.train(tg.parse_args(common + ["--steps", "5", "--workdir", str(tmp_path / "a")]))
    first = tg.train(tg.parse_args(common + ["--steps", "3", "--workdir", str(tmp_path / "b")]))
    before = sorted(str(p.relative_to(tmp_path / "b")) for p in (tmp_path / "b").rglob("*"))
    folder = tmp_path / "exported"
    tg.main(["--workdir", str(tmp_path / "b"), "--export", str(folder)])  # the settings come from the workdir
    assert sorted(str(p.relative_to(tmp_path / "b")) for p in (tmp_path / "b").rglob("*")) == before
    info = json.loads((folder / "export.json").read_text())
    assert info["step"] == 3 and info["settings"] == json.loads((tmp_path / "b" / "settings.json").read_text())
    assert info["cpu_seconds"] >= 0
    # the exported arrays are the trained ones, all float32 (or the int step / optimizer counts)
    args = tg.parse_args(common + ["--steps", "3"])
    template = {**tg.template_at(args, 3), "cpu_seconds": jnp.zeros((), jnp.float32)}
    import orbax.checkpoint as ocp

    saved = ocp.StandardCheckpointer().restore(str(folder / "state"),
                                               jax.tree.map(ocp.utils.to_shape_dtype_struct, template))
    assert set(saved) == {"step", "g", "g_ema", "d", "opt_g", "opt_d", "cpu_seconds"}
    for a, b in zip(jax.tree.leaves(saved["opt_d"]) + jax.tree.leaves(saved["g_ema"]),
                    jax.tree.leaves(first["state"]["opt_d"]) + jax.tree.leaves(first["state"]["g_ema"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert {np.asarray(x).dtype.name for x in jax.tree.leaves(saved)} <= {"float32", "int32"}
    # a fresh workdir resumes from the export: step 3 -> 5, and the result equals the uninterrupted run
    capsys.readouterr()
    resumed = tg.train(tg.parse_args(common + ["--steps", "5", "--workdir", str(tmp_path / "c"),
                                               "--resume-from", str(folder)]))
    assert "resumed from step 3" in capsys.readouterr().out
    assert int(resumed["state"]["step"]) == 5
    for a, b in zip(jax.tree.leaves(whole["state"]), jax.tree.leaves(resumed["state"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    # an export of a run with other settings is refused, naming them; so is a folder that is no export
    with pytest.raises(SystemExit, match="other settings \\(lr_d\\)"):
        tg.train(tg.parse_args(common + ["--steps", "5", "--lr-d", "1e-3", "--workdir", str(tmp_path / "d"),
                                         "--resume-from", str(folder)]))
    with pytest.raises(SystemExit, match="not an exported run"):
        tg.train(tg.parse_args(common + ["--steps", "5", "--workdir", str(tmp_path / "e"),
                                         "--resume-from", str(tmp_path / "a")]))
    with pytest.raises(SystemExit, match="no training run"):
        tg.main(["--workdir", str(tmp_path / "nothing"), "--export", str(tmp_path / "x")])
    # --record-progress: the unfinished run's entry in TRAINING.json / TRAINING.md, with the shipped
    # generator's toy FID measured the same way (8 z against 8 cached val scenes at the run's 16 px)
    rng = np.random.default_rng(1)
    np.savez(os.path.join(cache, "gan-scenes-val-street-park-village-8-0.npz"),
             image=rng.integers(0, 256, size=(8, 128, 128, 3), dtype=np.uint8))
    out = tmp_path / "weights"
    tg.main(["--workdir", str(tmp_path / "c"), "--export", str(tmp_path / "again"), "--record-progress", "--out",
             str(out), "--fid-samples", "8", "--fid-reference", "8", "--cache", cache])
    entry = json.loads((out / "TRAINING.json").read_text())[tg.PROGRESS_ENTRY]
    assert entry["metrics"]["steps_done"] == 5 and entry["metrics"]["resolution"] == 16
    assert entry["hyperparameters"]["grow_at"] == 2 and entry["hyperparameters"]["channels"] == CHANNELS
    assert tg.parse_args(entry["command"].split()[2:]).channels == CHANNELS  # the recorded command parses
    fids = entry["metrics"]["shipped_generator_toy_fid"], entry["metrics"]["toy_fid"]
    assert all(np.isfinite(f) and f > 0 for f in fids)
    md = (out / "TRAINING.md").read_text()
    assert f"## {tg.PROGRESS_ENTRY}" in md and "unfinished: 5 of 16000 steps done (at 16 px" in md
    assert f"--resume-from {tmp_path / 'again'}" in md
