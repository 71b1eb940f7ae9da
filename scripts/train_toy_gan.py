"""Train the embedded toy generator of the scenes world adversarially (a GAN), resumably.

    python scripts/train_toy_gan.py --seed 0 --steps 16000 --grow-at 10000 --workdir results/toy_gan
    (the same command again resumes from the newest checkpoint in --workdir)
    python scripts/train_toy_gan.py ... --ship     (then export, measure and record the EMA generator)

The generator is `toy_generator`'s module (jaxdissect.models.toy.ToyGenerator: the Progressive
GAN's layer stack layer1 .. layer12 with pixel norm and equalized learning rate, then a tanh RGB
block), so the shipped weights load under the same name and every experiment takes them
unchanged. It grows as the Progressive GAN does: the first --grow-at steps train the stack up to
half the final resolution (with its own RGB block), then the last resolution's two layers fade
in over --fade steps (the output is (1 - a) * upsampled half-resolution RGB + a * full RGB, a
going from 0 to 1), and training goes on at full resolution. The discriminator (here only) grows
the same way: per resolution a 1x1 conv from RGB and a 4x4 stride-2 conv, then a minibatch-stddev
channel, a 3x3 conv and a linear score at 4x4, all with the equalized learning rate. The
StyleGAN2 recipe: non-saturating logistic loss, a lazy R1 penalty on real images, Adam with
beta1 = 0, and an exponential moving average (EMA) of the generator's weights, which is what
gets shipped. (Hinge loss with a spectral-norm discriminator collapsed to one image by step 2000.)

Training images are scenes of a few classes (default street, village and park: houses with
doors and windows, trees, people, cars) rendered once from the train split. Every --eval-every
steps the toy FID of the EMA generator (1000 fixed z, against 2000 val scenes of the same
classes at the stage's resolution) is logged to <workdir>/fid.json. Checkpoints (orbax, the
whole training state) go to <workdir>/checkpoints every --checkpoint-minutes; a run continues
from the newest one and refuses a workdir made with other settings. --ship writes the EMA
generator (no optimizer state) to --out/toy_generator with a sample grid, measures it and
records the run in TRAINING.json / TRAINING.md.

A run that cannot finish in one go can be carried elsewhere as one compact folder:
    python scripts/train_toy_gan.py --workdir results/toy_gan --export checkpoints/toy_gan_resume
writes the workdir's newest checkpoint (G, D, the EMA generator, both Adam states, the step,
the CPU seconds so far; float32) with the run's settings and FID history (export.json), without
touching the workdir (a run may be training in it); the run's settings come from the workdir.
    python scripts/train_toy_gan.py <the run's flags> --resume-from checkpoints/toy_gan_resume
continues from it (when it is newer than the workdir's checkpoint; other settings are refused).
Every random draw is a function of (--seed, step): the step's key is fold_in(key(seed), step)
and its batch comes from numpy's default_rng([seed, step]), so the step is the whole rng state.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_toy  # noqa: E402  (the toy-training helpers: logging, record)

from jaxdissect.data.scenes import SCENE_CLASSES, Scenes  # noqa: E402
from jaxdissect.data.zdataset import standard_z_sample  # noqa: E402
from jaxdissect.experiments import generator_quality as gq  # noqa: E402
from jaxdissect.models import load, registry  # noqa: E402
from jaxdissect.models.proggan import NormConvBlock, output_name  # noqa: E402
from jaxdissect.models.layers import WScale  # noqa: E402
from jaxdissect.models.toy import ToRGB  # noqa: E402
from jaxdissect.models.weights_io import save_weights  # noqa: E402
from jaxdissect.segment.toy import ToySegmenter  # noqa: E402

DEFAULT_CLASSES = ("street", "village", "park")
FID_Z_SEED, FID_SAMPLES = 1, 1000


def resolution_of(channels: Sequence[int]) -> int:
    return 4 * 2 ** (len(channels) - 1)


# ---- the growing generator (ToyGenerator's parameter names) ---------------------------------
class GrowingGenerator(nn.Module):
    """ToyGenerator's stack for `channels`; with `fade`, also the RGB block of the previous
    resolution, and the output (1 - alpha) * upsample(previous RGB) + alpha * RGB."""

    z_dim: int
    channels: Sequence[int]
    fade: bool = False

    @nn.compact
    def __call__(self, z: jax.Array, alpha: jax.Array | float = 1.0) -> jax.Array:
        x = z.reshape(z.shape[0], 1, 1, self.z_dim)
        x = NormConvBlock(self.channels[0], 4, 3, name="layer1")(x)
        x = NormConvBlock(self.channels[0], 3, 1, name="layer2")(x)
        prev = x
        for i, c in enumerate(self.channels[1:]):
            prev = x
            x = NormConvBlock(c, 3, 1, upsample=True, name=f"layer{2 * i + 3}")(x)
            x = NormConvBlock(c, 3, 1, name=f"layer{2 * i + 4}")(x)
        out = ToRGB(name=output_name(self.channels))(x)
        if not self.fade:
            return out
        low = ToRGB(name=output_name(self.channels[:-1]))(prev)
        low = jnp.repeat(jnp.repeat(low, 2, axis=1), 2, axis=2)
        return alpha * out + (1.0 - alpha) * low


def shipped_params(params: dict, channels: Sequence[int]) -> dict:
    """The ToyGenerator parameters for `channels` out of a (possibly fading) growing generator's."""
    keep = [f"layer{i}" for i in range(1, 2 * len(channels) + 1)] + [output_name(channels)]
    missing = [k for k in keep if k not in params]
    if missing:
        raise KeyError(f"generator parameters lack {missing}")
    return {k: params[k] for k in keep}


# ---- the growing discriminator --------------------------------------------------------------
def d_width(r: int, widest: int = 256) -> int:
    """Discriminator width at resolution r: 8 at 128 px, doubling per halving, capped."""
    return min(widest, 8 * max(128 // r, 1))


class MinibatchStddev(nn.Module):
    """Append the mean over features of the per-feature standard deviation within contiguous
    groups of `group` images (a channel that lets the discriminator see sample diversity)."""

    group: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        g = min(self.group, n)
        if n % g:
            raise ValueError(f"minibatch stddev: batch {n} is not a multiple of the group size {g}")
        y = x.reshape(n // g, g, h, w, c)
        s = jnp.sqrt(y.var(axis=1) + 1e-8).mean(axis=(1, 2, 3))
        s = jnp.broadcast_to(jnp.repeat(s, g)[:, None, None, None], (n, h, w, 1))
        return jnp.concatenate([x, s], axis=-1)


class EqConv(nn.Module):
    """Conv with the equalized learning rate of the generator's blocks: N(0, 1) weights scaled
    at run time by gain / sqrt(fan in), a bias, LeakyReLU(0.2) unless `linear`."""

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    linear: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        x = nn.Conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                    padding=self.padding, use_bias=False, kernel_init=nn.initializers.normal(1.0), name="conv")(x)
        gain = 1.0 if self.linear else math.sqrt(2.0)
        x = WScale(fan_in, gain / self.kernel, name="wscale")(x)
        return x if self.linear else nn.leaky_relu(x, 0.2)


class Discriminator(nn.Module):
    """NHWC images in [-1, 1] of side `resolution` -> (N,) logits. Per resolution r: `from_rgb_r`
    (1x1 conv) on the image, then `block_r` (4x4 stride-2 conv to r/2); with `fade`, the input of
    block_{r/2} is (1 - alpha) * from_rgb_{r/2}(2x2 average of the image) + alpha * block_r(...).
    At 4x4: a minibatch-stddev channel, a 3x3 conv and a linear score. Equalized learning rate."""

    resolution: int
    fade: bool = False

    @nn.compact
    def __call__(self, img: jax.Array, alpha: jax.Array | float = 1.0) -> jax.Array:
        r = self.resolution
        if img.shape[1:3] != (r, r):
            raise ValueError(f"discriminator for {r}x{r} images got shape {img.shape}")
        x = EqConv(d_width(r // 2), 4, 2, 1, name=f"block_{r}")(EqConv(d_width(r), 1, name=f"from_rgb_{r}")(img))
        if self.fade:
            n = img.shape[0]
            low = img.reshape(n, r // 2, 2, r // 2, 2, 3).mean((2, 4))
            x = alpha * x + (1.0 - alpha) * EqConv(d_width(r // 2), 1, name=f"from_rgb_{r // 2}")(low)
        r //= 2
        while r > 4:
            x = EqConv(d_width(r // 2), 4, 2, 1, name=f"block_{r}")(x)
            r //= 2
        x = EqConv(d_width(4), 3, 1, 1, name="out")(MinibatchStddev()(x))
        x = x.reshape(x.shape[0], 1, 1, -1)
        return EqConv(1, 1, linear=True, name="score")(x)[:, 0, 0, 0]


# ---- losses, optimizers, the training step ----------------------------------------------------
def d_logistic_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """The discriminator's non-saturating GAN loss: -log sigmoid(real) - log(1 - sigmoid(fake))."""
    return jax.nn.softplus(-real_logits).mean() + jax.nn.softplus(fake_logits).mean()


def g_logistic_loss(fake_logits: jax.Array) -> jax.Array:
    """The generator's non-saturating loss: -log sigmoid(fake)."""
    return jax.nn.softplus(-fake_logits).mean()


def r1_penalty(disc_fn, real: jax.Array) -> jax.Array:
    """Mean over images of |d D(x) / dx|^2 at real images x (R1, Mescheder et al. 2018)."""
    grads = jax.grad(lambda x: disc_fn(x).sum())(real)
    return jnp.sum(jnp.square(grads), axis=(1, 2, 3)).mean()


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
    """The EMA decay at a step: min(decay, (1 + step) / (10 + step)), so early weights fade fast."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def ema_update(ema: Any, params: Any, decay: jax.Array | float) -> Any:
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def optimizers(args) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    return (optax.adam(args.lr_g, b1=args.beta1, b2=0.99), optax.adam(args.lr_d, b1=args.beta1, b2=0.99))


class Stage:
    """The networks of one training stage: final channels truncated to `depth` resolutions,
    fading in the last one when `fade`."""

    def __init__(self, args, depth: int, fade: bool):
        self.channels = tuple(args.channels[:depth])
        self.resolution = resolution_of(self.channels)
        self.fade = fade
        self.gen = GrowingGenerator(args.z_dim, self.channels, fade)
        self.disc = Discriminator(self.resolution, fade)
        self.args = args

    def init(self, key) -> dict:
        """A fresh training state (what a checkpoint holds)."""
        kg, kd = jax.random.split(key)
        g = self.gen.init(kg, jnp.zeros((1, self.args.z_dim)))["params"]
        d = self.disc.init(kd, jnp.zeros((4, self.resolution, self.resolution, 3)))["params"]
        opt_g, opt_d = optimizers(self.args)
        return {"step": jnp.zeros((), jnp.int32), "g": g, "g_ema": jax.tree.map(jnp.copy, g), "d": d,
                "opt_g": opt_g.init(g), "opt_d": opt_d.init(d)}

    def train_step(self, r1: bool):
        """jitted (state, real images in [-1, 1], key, alpha) -> (state, metrics): one
        discriminator update on a real and a fake batch (with the R1 penalty, weighted by
        gamma * r1_every / 2, when `r1`: lazy regularization), one generator update, the EMA."""
        gen, disc, args = self.gen, self.disc, self.args
        opt_g, opt_d = optimizers(args)
        r1_weight = 0.5 * args.r1_gamma * args.r1_every

        def d_loss(d, real, fake, alpha):
            both = jnp.concatenate([real, fake])  # the stddev channel's groups never mix the halves
            logits = disc.apply({"params": d}, both, alpha)
            n = real.shape[0]
            loss = d_logistic_loss(logits[:n], logits[n:])
            pen = r1_penalty(lambda x: disc.apply({"params": d}, x, alpha), real) if r1 else jnp.zeros(())
            return loss + r1_weight * pen, (logits[:n].mean(), logits[n:].mean(), pen)

        def g_loss(g, d, z, alpha):
            return g_logistic_loss(disc.apply({"params": d}, gen.apply({"params": g}, z, alpha), alpha))

        def step(state, real, key, alpha):
            kd, kg = jax.random.split(key)
            n = real.shape[0]
            fake = gen.apply({"params": state["g"]}, jax.random.normal(kd, (n, args.z_dim)), alpha)
            (ld, (sr, sf, pen)), gd = jax.value_and_grad(d_loss, has_aux=True)(
                state["d"], real, jax.lax.stop_gradient(fake), alpha)
            upd, opt_d_state = opt_d.update(gd, state["opt_d"], state["d"])
            d = optax.apply_updates(state["d"], upd)
            lg, gg = jax.value_and_grad(g_loss)(state["g"], d, jax.random.normal(kg, (n, args.z_dim)), alpha)
            upd, opt_g_state = opt_g.update(gg, state["opt_g"], state["g"])
            g = optax.apply_updates(state["g"], upd)
            ema = ema_update(state["g_ema"], g, ema_decay(state["step"], args.ema))
            new = {"step": state["step"] + 1, "g": g, "g_ema": ema, "d": d, "opt_g": opt_g_state,
                   "opt_d": opt_d_state}
            return new, {"d_loss": ld, "g_loss": lg, "real_score": sr, "fake_score": sf, "r1": pen}

        return jax.jit(step, donate_argnums=0)

    def sampler(self):
        """jitted (generator params, z, alpha) -> images."""
        return jax.jit(lambda p, z, alpha: self.gen.apply({"params": p}, z, alpha))


def graft(new: Any, old: Any) -> Any:
    """`new` with every leaf whose path also exists in `old` (same shape) taken from `old`: the
    trained layers and their optimizer moments carry over when the networks grow."""
    old_leaves = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(old)[0]}

    def pick(path, leaf):
        v = old_leaves.get(jax.tree_util.keystr(path))
        return v if v is not None and jnp.shape(v) == jnp.shape(leaf) else leaf

    return jax.tree_util.tree_map_with_path(pick, new)


# ---- data ----------------------------------------------------------------------------------
def _render(args):
    seed, split, start, stop, ids = args
    ds = Scenes(split, 10 ** 9, seed=seed)
    out = []
    for i in range(start, stop):
        item = ds[i]
        if item["scene"] in ids:
            out.append(item["image"])
    return out


def class_scenes(split: str, classes: Sequence[str], n: int, seed: int, cache: str | None = None,
                 processes: int | None = None) -> np.ndarray:
    """uint8 images (n, 128, 128, 3): the first n scenes of `split` whose class is in `classes`
    (cached as .npz under `cache`), rendered by `processes` processes (default: one per core)."""
    processes = processes or os.cpu_count() or 1
    ids = sorted(SCENE_CLASSES.index(c) for c in classes)
    tag = "-".join(SCENE_CLASSES[i] for i in ids)
    path = pathlib.Path(cache) / f"gan-scenes-{split}-{tag}-{n}-{seed}.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path) as f:
            return f["image"]
    t = time.time()
    chunk = max(64, n // (8 * processes))  # a round (4 chunks per process) renders about n / 2 scenes
    out, start = [], 0
    if n < 500 or processes < 2:  # not worth starting processes
        while len(out) < n:
            out.extend(_render((seed, split, start, start + chunk, ids)))
            start += chunk
    else:
        from multiprocessing import get_context

        with get_context("spawn").Pool(processes) as pool:
            while len(out) < n:
                jobs = [(seed, split, s, s + chunk, ids) for s in range(start, start + processes * 4 * chunk, chunk)]
                start += processes * 4 * chunk
                for part in pool.map(_render, jobs):
                    out.extend(part)
    images = np.stack(out[:n])
    train_toy.log(f"rendered {n} {split} scenes of {tag} in {time.time() - t:.0f}s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, image=images)
    return images


def downsample(images: np.ndarray, resolution: int) -> np.ndarray:
    """Box-downsample uint8 images (N, S, S, 3) to `resolution` (S a multiple of it)."""
    n, s = images.shape[:2]
    f = s // resolution
    if f == 1:
        return images
    return images.reshape(n, resolution, f, resolution, f, 3).mean((2, 4)).round().astype(np.uint8)


def real_batch(images: np.ndarray, seed: int, step: int, batch: int) -> jax.Array:
    """The step's batch (seeded by (seed, step), so a resumed run sees the same batches), about
    half of it mirrored left-right, in [-1, 1]."""
    rng = np.random.default_rng([seed, step])
    x = images[rng.integers(0, len(images), batch)]
    flip = rng.random(batch) < 0.5
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    return jnp.asarray(x, jnp.float32) / 127.5 - 1.0


# ---- evaluation ----------------------------------------------------------------------------
def fid_z(samples: int, z_dim: int) -> np.ndarray:
    """The fixed z of the tracked toy FID: numpy default_rng(FID_Z_SEED) standard normals."""
    return np.random.default_rng(FID_Z_SEED).standard_normal((samples, z_dim)).astype(np.float32)


class FidTracker:
    """Toy FID of a generator's samples for FID_SAMPLES fixed z against reference scenes shown at
    the generator's resolution (box-downsampled, then resized to 128 for the classifier)."""

    def __init__(self, reference_uint8: np.ndarray, z_dim: int, samples: int = FID_SAMPLES, batch: int = 100):
        self.classifier = load("toy_classifier")
        self.batch = batch
        self.reference = reference_uint8
        self._features = jax.jit(lambda x: gq.classifier_outputs(self.classifier, x)[0])
        self._ref_stats = {}
        self.z = fid_z(samples, z_dim)

    def features(self, images_pm1: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(self._features(jnp.asarray(images_pm1[i:i + self.batch])))
                               for i in range(0, len(images_pm1), self.batch)])

    def reference_stats(self, resolution: int):
        if resolution not in self._ref_stats:
            ref = downsample(self.reference, resolution).astype(np.float32) / 127.5 - 1.0
            self._ref_stats[resolution] = gq.gaussian_factor(self.features(ref))
        return self._ref_stats[resolution]

    def __call__(self, sample, params, alpha: float, resolution: int) -> float:
        feats = np.concatenate([np.asarray(self._features(sample(params, jnp.asarray(self.z[i:i + self.batch]), alpha)))
                                for i in range(0, len(self.z), self.batch)])
        return float(gq.frechet_distance_factors(*gq.gaussian_factor(feats), *self.reference_stats(resolution)))


def save_grid(path: str, images_pm1, rows: int = 4, scale: int = 1) -> None:
    """A grid of images in [-1, 1] (rows x N/rows) as a PNG, each image enlarged `scale` times."""
    from PIL import Image

    x = np.asarray(jnp.clip((jnp.asarray(images_pm1) + 1.0) * 127.5 + 0.5, 0, 255)).astype(np.uint8)
    n, h, w, _ = x.shape
    cols = n // rows
    x = x[:rows * cols].reshape(rows, cols, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)
    img = Image.fromarray(x)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)


# ---- checkpoints ---------------------------------------------------------------------------
SETTINGS = ("seed", "batch", "lr_g", "lr_d", "beta1", "ema", "r1_gamma", "r1_every", "z_dim", "channels", "classes",
            "train_size", "grow_at", "fade")


def run_settings(args) -> dict:
    """What makes a training run: a workdir made with other settings is refused."""
    return {k: (sorted(v) if k == "classes" else list(v) if isinstance(v, (list, tuple)) else v)
            for k, v in ((k, getattr(args, k)) for k in SETTINGS)}


def checkpoint_manager(workdir: str, settings: dict):
    """The workdir's checkpoint manager, after checking that its run had these settings. The
    growth schedule (--grow-at, --fade) may change while the run has not reached either."""
    import orbax.checkpoint as ocp

    os.makedirs(workdir, exist_ok=True)
    mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
    path = os.path.join(workdir, "settings.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        step = mngr.latest_step() or 0
        if set(diff) <= {"grow_at", "fade"} and step < min(old["grow_at"], settings["grow_at"]):
            diff = []
        if diff:
            raise SystemExit(f"error: workdir {workdir} holds a run with other settings ({', '.join(diff)}); "
                             "use another --workdir")
    with open(path, "w") as f:
        json.dump(settings, f, indent=1)
    return mngr


def template_at(args, step: int) -> dict:
    """A training state shaped like the checkpoint of `step` (saved after steps 0 .. step - 1, so
    it holds the networks of step - 1: at step --grow-at, those before growing)."""
    depth, fade, _ = stage_at(args, max(step - 1, 0))
    return Stage(args, depth, fade).init(jax.random.key(args.seed))


def export(args) -> tuple[dict, dict]:
    """Write the newest checkpoint of --workdir (settings from its settings.json) to --export as
    `state` (orbax) and `export.json` (settings, step, CPU seconds, FID history); returns
    (the latter, the state)."""
    import orbax.checkpoint as ocp

    workdir = pathlib.Path(args.workdir)
    if not (workdir / "settings.json").is_file():
        raise SystemExit(f"error: --export: {workdir} holds no training run (no settings.json)")
    settings = json.loads((workdir / "settings.json").read_text())
    for k, v in settings.items():
        setattr(args, k, v)
    mngr = ocp.CheckpointManager(os.path.abspath(workdir / "checkpoints"),
                                 options=ocp.CheckpointManagerOptions(read_only=True))
    step = mngr.latest_step()
    if step is None:
        raise SystemExit(f"error: --export: {workdir} has no checkpoint yet")
    state, seconds = restore(mngr, template_at(args, step), step)
    fid_path = workdir / "fid.json"
    history = [h for h in json.loads(fid_path.read_text()) if h["step"] <= step] if fid_path.is_file() else []
    info = {"settings": settings, "step": int(state["step"]), "cpu_seconds": round(seconds), "fid_history": history}
    out = pathlib.Path(args.export).absolute()
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp / "state", {**state, "cpu_seconds": jnp.asarray(seconds, jnp.float32)})
    ckptr.wait_until_finished()
    (tmp / "export.json").write_text(json.dumps(info, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    train_toy.log(f"exported step {info['step']} ({info['cpu_seconds']} CPU seconds) of {workdir} to {args.export}")
    return info, state


PROGRESS_ENTRY = "generator-gan (unfinished)"


def record_progress(args, info: dict, state: dict, argv: Sequence[str]) -> dict:
    """The exported run's entry in --out's TRAINING.json / TRAINING.md: an unfinished GAN run
    (command, steps done, CPU time, FID history), the toy FID of its EMA generator now, and the
    shipped toy_generator's measured the same way (the same z and val scenes, at the run's
    current resolution)."""
    step, settings = info["step"], info["settings"]
    depth, fade, alpha = stage_at(args, max(step - 1, 0))
    stage = Stage(args, depth, fade)
    resolution = stage.resolution
    ref = class_scenes("val", args.classes, args.fid_reference, args.seed, args.cache)
    tracker = FidTracker(ref, args.z_dim, samples=args.fid_samples)
    now_fid = round(tracker(stage.sampler(), state["g_ema"], jnp.float32(alpha), resolution), 2)
    train_toy.log(f"step {step}: toy FID {now_fid:.1f} (EMA generator, {len(tracker.z)} samples, {resolution} px)")
    shipped = load("toy_generator")
    tracker.z = fid_z(args.fid_samples, int(shipped.z_dim))  # the same z when the widths agree (they do here)
    sample = jax.jit(lambda v, z, a: downsample_pm1(shipped.module.apply(v, z), resolution))
    shipped_fid = round(tracker(sample, shipped.variables, jnp.float32(1.0), resolution), 2)
    train_toy.log(f"the shipped toy_generator's toy FID at {resolution} px: {shipped_fid:.1f}")
    kept = [a for a in train_toy._without_cache(argv) if a != "--record-progress"]
    hist = info["fid_history"]
    lines = [f"- unfinished: {step} of {args.steps} steps done (at {resolution} px, alpha {alpha:.2f}); "
             f"{info['cpu_seconds']} CPU seconds so far (all threads); not shipped: toy_generator is still the VAE",
             f"- resumable state (G, D, EMA generator, Adam states, step; float32): `{args.export}`, written by "
             f"`python scripts/train_toy_gan.py {' '.join(kept)}`; continue with the command above plus "
             f"`--resume-from {args.export}`"]
    lines.append(f"- toy FID ({args.fid_samples} z vs {args.fid_reference} val scenes of "
                 f"{'/'.join(args.classes)} at {resolution} px): the EMA generator at step {step}: {now_fid:.1f}; "
                 f"the shipped VAE toy_generator (box-downsampled to {resolution} px): {shipped_fid:.1f}")
    if hist:
        lines.append("- toy FID during training: " + ", ".join(f"step {h['step']} ({h['resolution']} px): "
                                                               f"{h['toy_fid']:.0f}" for h in hist))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "TRAINING.json")
    data = json.load(open(path)) if os.path.isfile(path) else {}
    command = "python scripts/train_toy_gan.py " + " ".join(f"--{k.replace('_', '-')} "
                                                              + (" ".join(map(str, v)) if isinstance(v, list) else str(v))
                                                              for k, v in settings.items()) + f" --steps {args.steps}"
    entry = {"command": command, "seed": settings["seed"], "hyperparameters": {**settings, "steps": args.steps},
             "jax": jax.__version__,
             "metrics": {"train_seconds": info["cpu_seconds"], "steps_done": step, "resolution": resolution,
                         "fid_history": hist, "toy_fid": now_fid, "shipped_generator_toy_fid": shipped_fid},
             "summary_lines": lines}
    data[PROGRESS_ENTRY] = entry
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)
    train_toy.write_training_md(args.out, data)
    return entry


def downsample_pm1(images: jax.Array, resolution: int) -> jax.Array:
    """Box-downsample images (N, S, S, 3) to `resolution` (S a multiple of it), as `downsample` does
    for uint8 scenes (without its rounding)."""
    n, s = images.shape[:2]
    f = s // resolution
    return images if f == 1 else images.reshape(n, resolution, f, resolution, f, 3).mean((2, 4))


def import_export(args, mngr, settings: dict) -> None:
    """Put the --resume-from folder's state into the workdir's checkpoints (and its FID history
    into fid.json) when it is newer than the workdir's newest checkpoint."""
    import orbax.checkpoint as ocp

    folder = pathlib.Path(args.resume_from)
    if not (folder / "export.json").is_file() or not (folder / "state").is_dir():
        raise SystemExit(f"error: --resume-from {folder}: not an exported run (no export.json and state/)")
    info = json.loads((folder / "export.json").read_text())
    diff = sorted(k for k in set(info["settings"]) | set(settings) if info["settings"].get(k) != settings.get(k))
    if diff:
        raise SystemExit(f"error: --resume-from {folder} was exported from a run with other settings "
                         f"({', '.join(diff)}); use that run's flags")
    if info["step"] <= (mngr.latest_step() or -1):
        return
    template = {**template_at(args, info["step"]), "cpu_seconds": jnp.zeros((), jnp.float32)}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    state = ocp.StandardCheckpointer().restore((folder / "state").absolute(), abstract)
    mngr.save(info["step"], args=ocp.args.StandardSave(state), force=True)
    mngr.wait_until_finished()
    with open(os.path.join(args.workdir, "fid.json"), "w") as f:
        json.dump(info["fid_history"], f, indent=0)


def save_checkpoint(mngr, state: dict, seconds: float) -> None:
    import orbax.checkpoint as ocp

    state = {**state, "cpu_seconds": jnp.asarray(seconds, jnp.float32)}
    mngr.save(int(state["step"]), args=ocp.args.StandardSave(state), force=True)
    mngr.wait_until_finished()


def restore(mngr, template: dict, step: int | None = None) -> tuple[dict, float]:
    """(state, CPU seconds so far) of checkpoint `step` (default: the newest)."""
    import orbax.checkpoint as ocp

    template = {**template, "cpu_seconds": jnp.zeros((), jnp.float32)}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    state = mngr.restore(mngr.latest_step() if step is None else step, args=ocp.args.StandardRestore(abstract))
    seconds = float(state.pop("cpu_seconds"))
    return state, seconds


# ---- training --------------------------------------------------------------------------------
def stage_at(args, step: int) -> tuple[int, bool, float]:
    """(resolutions used, fading, alpha) of the networks at `step`."""
    depth = len(args.channels)
    if args.grow_at <= 0:
        return depth, False, 1.0
    if step < args.grow_at:
        return depth - 1, False, 1.0
    return depth, True, min(1.0, (step - args.grow_at + 1) / max(args.fade, 1))


def train(args) -> dict:
    """Train (or resume) to --steps; returns the final state, its stage and the FID history."""
    mngr = checkpoint_manager(args.workdir, run_settings(args))
    if args.resume_from:
        import_export(args, mngr, run_settings(args))
    images = class_scenes("train", args.classes, args.train_size, args.seed, args.cache)
    start = mngr.latest_step() or 0
    depth, fade, _ = stage_at(args, max(start - 1, 0))  # the networks of the checkpoint (grown below if due)
    stage = Stage(args, depth, fade)
    key = jax.random.key(args.seed)
    state, cpu = stage.init(key), 0.0
    if mngr.latest_step() is not None:
        state, cpu = restore(mngr, state)
        train_toy.log(f"resumed from step {start} ({cpu:.0f} CPU seconds so far)")
    fid_path = os.path.join(args.workdir, "fid.json")
    history = json.load(open(fid_path)) if os.path.isfile(fid_path) else []
    history = [h for h in history if h["step"] <= start]
    tracker = None
    if args.eval_every:
        ref = class_scenes("val", args.classes, args.fid_reference, args.seed, args.cache)
        tracker = FidTracker(ref, args.z_dim, samples=args.fid_samples)
    step_fns, sample = (stage.train_step(False), stage.train_step(True)), stage.sampler()
    reals = downsample(images, stage.resolution)
    train_toy.log(f"training steps {start}..{args.steps} from {stage.resolution} px (G channels {stage.channels}); "
                  f"{len(images)} training scenes of {', '.join(args.classes)}")
    t_ckpt, c0, hist = time.time(), time.process_time(), []
    for i in range(start, args.steps):
        depth, fade, alpha = stage_at(args, i)
        if (depth, fade) != (len(stage.channels), stage.fade):
            new = Stage(args, depth, fade)
            state = graft(new.init(jax.random.fold_in(key, i)), state)
            stage, step_fns, sample = new, (new.train_step(False), new.train_step(True)), new.sampler()
            reals = downsample(images, stage.resolution)
            train_toy.log(f"step {i}: grown to {stage.resolution} px (fading in over {args.fade} steps)")
        step_fn = step_fns[args.r1_every > 0 and i % args.r1_every == 0]
        state, m = step_fn(state, real_batch(reals, args.seed, i, args.batch), jax.random.fold_in(key, i),
                           jnp.float32(alpha))
        hist.append(m)
        done = i + 1
        if done % args.log_every == 0 or done == args.steps:
            m = jax.tree.map(lambda *v: float(np.mean(v)), *hist)
            r1s = [float(h["r1"]) for j, h in enumerate(hist, done - len(hist)) if args.r1_every and j % args.r1_every == 0]
            hist = []
            secs = cpu + time.process_time() - c0
            train_toy.log(f"step {done} ({stage.resolution} px, alpha {alpha:.2f}): d {m['d_loss']:.3f} "
                          f"g {m['g_loss']:.3f} real {m['real_score']:.2f} fake {m['fake_score']:.2f} "
                          f"r1 {np.mean(r1s) if r1s else 0:.3f}; {secs:.0f} CPU s")
        if tracker is not None and (done % args.eval_every == 0 or done == args.steps):
            fid = tracker(sample, state["g_ema"], jnp.float32(alpha), stage.resolution)
            history.append({"step": done, "resolution": stage.resolution, "alpha": round(alpha, 3),
                            "toy_fid": round(fid, 2), "cpu_seconds": round(cpu + time.process_time() - c0)})
            with open(fid_path + ".tmp", "w") as f:
                json.dump(history, f, indent=0)
            os.replace(fid_path + ".tmp", fid_path)
            train_toy.log(f"step {done}: toy FID {fid:.1f} (EMA generator, {len(tracker.z)} samples, "
                          f"{stage.resolution} px)")
            save_grid(os.path.join(args.workdir, "samples.png"), sample(state["g_ema"], jnp.asarray(tracker.z[:32]),
                                                                        jnp.float32(alpha)))
        if done == args.steps or time.time() - t_ckpt > 60 * args.checkpoint_minutes:
            save_checkpoint(mngr, state, cpu + time.process_time() - c0)
            t_ckpt = time.time()
    return {"state": state, "stage": stage, "history": history,
            "cpu_seconds": round(cpu + time.process_time() - c0)}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=16000)
    p.add_argument("--grow-at", type=int, default=10000, help="steps at half resolution (0: full resolution throughout)")
    p.add_argument("--fade", type=int, default=1000, help="steps over which the last resolution fades in")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr-g", type=float, default=2e-3, help="generator Adam rate")
    p.add_argument("--lr-d", type=float, default=2e-3, help="discriminator Adam rate")
    p.add_argument("--beta1", type=float, default=0.0)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--r1-gamma", type=float, default=0.1, help="weight of the R1 penalty on real images")
    p.add_argument("--r1-every", type=int, default=4, help="apply R1 every N steps (scaled by N; 0: never)")
    p.add_argument("--z-dim", type=int, default=None, help="default: toy_generator's")
    p.add_argument("--channels", type=int, nargs="+", default=None,
                   help="generator widths at 4x4, 8x8, ... (default: toy_generator's)")
    p.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES), help=f"scene classes ({', '.join(SCENE_CLASSES)})")
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--fid-reference", type=int, default=2000, help="val scenes the tracked FID compares with")
    p.add_argument("--fid-samples", type=int, default=FID_SAMPLES)
    p.add_argument("--eval-every", type=int, default=1000, help="toy FID every N steps (0: never)")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--workdir", default="results/toy_gan")
    p.add_argument("--cache", default=None, help="folder to cache rendered scenes (.npz)")
    p.add_argument("--ship", action="store_true", help="after training, ship the EMA generator into --out")
    p.add_argument("--export", default=None, metavar="FOLDER",
                   help="write --workdir's newest checkpoint (with its settings) to FOLDER and exit (no training)")
    p.add_argument("--record-progress", action="store_true",
                   help="--export: also record the unfinished run (and the shipped generator's toy FID) in --out's "
                        "TRAINING.json / TRAINING.md")
    p.add_argument("--resume-from", default=None, metavar="FOLDER",
                   help="continue from an --export folder (when newer than --workdir's checkpoint)")
    p.add_argument("--out", default=str(train_toy.DEFAULT_OUT))
    p.add_argument("--measure-samples", type=int, default=200, help="--ship: samples for the unit-ablation figures (0: none)")
    args = p.parse_args(argv)
    bad = [c for c in args.classes if c not in SCENE_CLASSES]
    if bad:
        p.error(f"--classes: unknown scene class {bad[0]!r}; expected some of {', '.join(SCENE_CLASSES)}")
    default = registry.get_spec("toy_generator").default_config
    args.channels = list(args.channels or default["channels"])
    args.z_dim = int(args.z_dim or default["z_dim"])
    if args.batch % 4:
        p.error(f"--batch {args.batch} must be a multiple of 4 (the minibatch-stddev group)")
    if len(args.channels) < 2 or resolution_of(args.channels) > 128:
        p.error(f"--channels: {len(args.channels)} widths give {resolution_of(args.channels)} px; need 8..128 px")
    if args.grow_at >= args.steps:
        p.error(f"--grow-at {args.grow_at} must be below --steps {args.steps}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "float32")
    if args.export:
        info, state = export(args)
        if args.record_progress:
            record_progress(args, info, state, argv)
        return
    out = train(args)
    if args.ship:
        ship(out, args, argv)


def ship(out: dict, args, argv: Sequence[str]) -> None:
    """Write the EMA generator as `toy_generator` (ToyGenerator parameters only), its sample grid,
    its unit-ablation measurements, and the run's entry in TRAINING.json / TRAINING.md."""
    stage, state = out["stage"], out["state"]
    _, _, alpha = stage_at(args, args.steps - 1)
    if tuple(stage.channels) != tuple(args.channels) or alpha < 1.0:
        raise SystemExit(f"error: --ship needs a run that ends at full resolution with the fade-in done; "
                         f"step {args.steps} is at {stage.resolution} px with alpha {alpha:.2f}")
    config = {"z_dim": args.z_dim, "channels": list(args.channels)}
    gen = registry.get_spec("toy_generator").build(config)
    variables = {"params": shipped_params(state["g_ema"], args.channels)}
    z = jnp.asarray(standard_z_sample(32, args.z_dim, 1))
    images = gen.apply(variables, z)
    if not np.array_equal(np.asarray(images), np.asarray(stage.gen.apply({"params": state["g_ema"]}, z, 1.0))):
        raise RuntimeError("the shipped ToyGenerator does not reproduce the trained generator")
    folder = os.path.join(args.out, "toy_generator")
    save_weights(folder, "toy_generator", variables, config, seed=args.seed)
    save_grid(os.path.join(args.out, "toy_generator_samples.png"), images, rows=4)
    metrics = {"train_seconds": out["cpu_seconds"], "resolution": stage.resolution, "classes": list(args.classes),
               "fid_history": out["history"]}
    if args.measure_samples:
        seg_dir = os.path.join(args.out, "toy_segmenter")
        seg = ToySegmenter(load("toy_segmenter", weights=seg_dir if os.path.isdir(seg_dir) else None))
        metrics.update(train_toy.measure_generator(gen, variables, config, seg, n=args.measure_samples))
    save_weights(folder, "toy_generator", variables, config, seed=args.seed, metrics=metrics)
    command = "python scripts/train_toy_gan.py " + " ".join(train_toy._without_cache(argv))
    record(args.out, {"command": command, "seed": args.seed, "jax": jax.__version__,
                      "hyperparameters": {k: getattr(args, k) for k in HYPERPARAMETERS}, "metrics": metrics})


HYPERPARAMETERS = ("steps", "grow_at", "fade", "batch", "lr_g", "lr_d", "beta1", "ema", "r1_gamma", "r1_every",
                   "train_size", "classes", "channels", "z_dim")


def record(out_dir: str, entry: dict) -> None:
    """Put the generator's entry into TRAINING.json and rewrite TRAINING.md (train_toy's writer)."""
    path = os.path.join(out_dir, "TRAINING.json")
    data = json.load(open(path)) if os.path.isfile(path) else {}
    gan = entry.get("command", "").startswith("python scripts/train_toy_gan.py")
    entry = {**entry, "summary_lines": summary_lines(entry["metrics"], gan)}
    data["generator"] = entry
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)
    train_toy.write_training_md(out_dir, data)


def summary_lines(m: dict, gan: bool = True) -> list[str]:
    """TRAINING.md lines beyond those train_toy writes for every generator: what the GAN run was
    (when `gan`; the VAE of train_toy.py has none) and the quality figures of measure_generator.py."""
    lines = [f"- a GAN (scripts/train_toy_gan.py) at {m.get('resolution')} px on {'/'.join(m.get('classes', []))} "
             "scenes; 'train seconds' is CPU time of the training process (all threads, resumed runs added up)"]
    lines = lines if gan else []
    hist = m.get("fid_history") or []
    if hist:
        lines.append("- toy FID during training (EMA generator, 1000 z, vs 2000 val scenes at the stage's "
                     "resolution): " + ", ".join(f"step {h['step']} ({h['resolution']} px): {h['toy_fid']:.0f}"
                                                 for h in hist))
    q = m.get("quality")
    if q:
        lines.append(f"- quality, measured by `{q['command']}` ({q['samples']} samples vs as many val scenes):")
        for name, g in q["generators"].items():
            lines.append(f"  - {name} ({g['resolution']} px): toy FID {g['vs_classes']['toy_fid']:.1f} vs "
                         f"{'/'.join(q['classes'])} scenes, {g['vs_all']['toy_fid']:.1f} vs all scenes; classifier "
                         f"confidence {g['vs_classes']['classifier_confidence']['generated']:.3f}")
        for res, r in q["real_vs_real"].items():
            lines.append(f"  - real vs real ({res} px): toy FID {r['toy_fid']:.1f}; classifier confidence "
                         f"{r['classifier_confidence']['generated']:.3f}")
    return lines


if __name__ == "__main__":
    main()
