"""PyTorch reference implementations of the original models, written from the reference
description (plain torch.nn; torchvision is not importable here), plus helpers for parity tests:
random non-trivial weights, hooks that retain layer outputs the way the original's nethook did,
and Flax capture of the same layers."""
from __future__ import annotations

import collections
import math
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

# ---------------------------------------------------------------------------------------------
# VGG16 (torchvision vgg16 with the original's research names)


def vgg16(num_classes: int = 365) -> nn.Module:
    """torchvision's VGG16 layout with renamed children; in-place ReLUs as in torchvision."""
    feats, in_ch = [], 3
    for stage, n, ch in ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)):
        for i in range(1, n + 1):
            feats += [(f"conv{stage}_{i}", nn.Conv2d(in_ch, ch, 3, padding=1)),
                      (f"relu{stage}_{i}", nn.ReLU(inplace=True))]
            in_ch = ch
        feats.append((f"pool{stage}", nn.MaxPool2d(2, 2)))
    classifier = [("fc6", nn.Linear(512 * 7 * 7, 4096)), ("relu6", nn.ReLU(inplace=True)),
                  ("drop6", nn.Dropout()), ("fc7", nn.Linear(4096, 4096)),
                  ("relu7", nn.ReLU(inplace=True)), ("drop7", nn.Dropout()),
                  ("fc8a", nn.Linear(4096, num_classes))]
    return _VGG(nn.Sequential(collections.OrderedDict(feats)),
                nn.Sequential(collections.OrderedDict(classifier)))


class _VGG(nn.Module):
    def __init__(self, features: nn.Module, classifier: nn.Module):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = classifier

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# ---------------------------------------------------------------------------------------------
# AlexNet (the original's oldalexnet)


class LRN(nn.Module):
    """Across-channel LRN: x / (1 + alpha * AvgPool3d_5ch(x^2))^beta (zero padding counted)."""

    def __init__(self, local_size=5, alpha=1e-4, beta=0.75):
        super().__init__()
        self.average = nn.AvgPool3d((local_size, 1, 1), stride=1, padding=((local_size - 1) // 2, 0, 0))
        self.alpha, self.beta = alpha, beta

    def forward(self, x):
        div = self.average(x.pow(2).unsqueeze(1)).squeeze(1)
        return x / div.mul(self.alpha).add(1.0).pow(self.beta)


class Vectorize(nn.Module):
    def forward(self, x):
        return x.reshape(x.shape[0], -1)


def alexnet(num_classes: int = 365) -> nn.Module:
    """Caffe AlexNet as an nn.Sequential with the original's child names (227x227 input)."""
    layers = [
        ("conv1", nn.Conv2d(3, 96, 11, stride=4)), ("relu1", nn.ReLU(inplace=True)),
        ("pool1", nn.MaxPool2d(3, 2)), ("lrn1", LRN()),
        ("conv2", nn.Conv2d(96, 256, 5, padding=2, groups=2)), ("relu2", nn.ReLU(inplace=True)),
        ("pool2", nn.MaxPool2d(3, 2)), ("lrn2", LRN()),
        ("conv3", nn.Conv2d(256, 384, 3, padding=1)), ("relu3", nn.ReLU(inplace=True)),
        ("conv4", nn.Conv2d(384, 384, 3, padding=1, groups=2)), ("relu4", nn.ReLU(inplace=True)),
        ("conv5", nn.Conv2d(384, 256, 3, padding=1, groups=2)), ("relu5", nn.ReLU(inplace=True)),
        ("pool5", nn.MaxPool2d(3, 2)), ("flatten", Vectorize()),
        ("fc6", nn.Linear(256 * 6 * 6, 4096)), ("relu6", nn.ReLU(inplace=True)), ("dropout6", nn.Dropout()),
        ("fc7", nn.Linear(4096, 4096)), ("relu7", nn.ReLU(inplace=True)), ("dropout7", nn.Dropout()),
        ("fc8", nn.Linear(4096, num_classes)),
    ]
    return nn.Sequential(collections.OrderedDict(layers))


# ---------------------------------------------------------------------------------------------
# ResNet152 (the original's Torch7-converted OldResNet152 layout)


class ConcatTable(nn.Sequential):
    """Torch7 ConcatTable: every child applied to the same input, outputs as a list."""

    def forward(self, x):
        return [m(x) for m in self]


class CAddTable(nn.Module):
    def forward(self, xs):
        return xs[0] + xs[1]


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _bottleneck(in_ch: int, mid: int, stride: int, project: bool) -> nn.Module:
    main = nn.Sequential(
        nn.Conv2d(in_ch, mid, 1, 1, 0, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
        nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
        nn.Conv2d(mid, 4 * mid, 1, 1, 0, bias=False), nn.BatchNorm2d(4 * mid))
    if project:
        short = nn.Sequential(nn.Conv2d(in_ch, 4 * mid, 1, stride, 0, bias=False), nn.BatchNorm2d(4 * mid))
    else:
        short = Lambda(lambda x: x)
    return nn.Sequential(ConcatTable(main, short), CAddTable(), nn.ReLU())


def resnet152(num_classes: int = 365, width: int = 64, blocks: Sequence[int] = (3, 8, 36, 3)) -> nn.Module:
    """The Torch7-layout ResNet (non-inplace ReLUs); `width`/`blocks` shrink it for tests."""
    children = [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.MaxPool2d(3, 2, 1)]
    in_ch = width
    for s, n in enumerate(blocks):
        mid = width * 2 ** s
        stage = [_bottleneck(in_ch if b == 0 else 4 * mid, mid, (1 if s == 0 else 2) if b == 0 else 1, b == 0)
                 for b in range(n)]
        children.append(nn.Sequential(*stage))
        in_ch = 4 * mid
    children += [nn.AvgPool2d(7, 1), Lambda(lambda x: x.view(x.size(0), -1)),
                 nn.Sequential(Lambda(lambda x: x.view(1, -1) if x.dim() == 1 else x),
                               nn.Linear(in_ch, num_classes))]
    return nn.Sequential(*children)


# ---------------------------------------------------------------------------------------------
# Progressive GAN generator (the original's experiment/proggan.py)


class PixelNorm(nn.Module):
    def forward(self, x):
        return x / torch.sqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


class Upsample2x(nn.Module):
    def forward(self, x):
        return nn.functional.interpolate(x, scale_factor=2, mode="nearest")


class WScale(nn.Module):
    def __init__(self, size: int, fan_in: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.scale = gain / math.sqrt(fan_in)
        self.b = nn.Parameter(torch.randn(size))

    def forward(self, x):
        return x * self.scale + self.b.view(1, -1, 1, 1)


class NormConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, k: int, padding: int, upsample: bool = False):
        super().__init__()
        self.norm = PixelNorm()
        if upsample:
            self.up = Upsample2x()
        self.upsample = upsample
        self.conv = nn.Conv2d(in_ch, out_ch, k, 1, padding, bias=False)
        self.wscale = WScale(out_ch, in_ch, gain=math.sqrt(2) / k)
        self.relu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        x = self.norm(x)
        if self.upsample:
            x = self.up(x)
        return self.relu(self.wscale(self.conv(x)))


class OutputConvBlock(nn.Module):
    def __init__(self, in_ch: int):
        super().__init__()
        self.norm = PixelNorm()
        self.conv = nn.Conv2d(in_ch, 3, 1, 1, 0, bias=False)
        self.wscale = WScale(3, in_ch, gain=1)

    def forward(self, x):
        return self.wscale(self.conv(self.norm(x)))


class ProgressiveGenerator(nn.Sequential):
    """sizes = [z_dim, width@4x4, width@8x8, ...]; children layer1.. and output_RxR."""

    def __init__(self, sizes: Sequence[int]):
        seq = [NormConvBlock(sizes[0], sizes[1], 4, 3), NormConvBlock(sizes[1], sizes[1], 3, 1)]
        for si, so in zip(sizes[1:-1], sizes[2:]):
            seq += [NormConvBlock(si, so, 3, 1, upsample=True), NormConvBlock(so, so, 3, 1)]
        named = [(f"layer{i + 1}", m) for i, m in enumerate(seq)]
        res = 4 * 2 ** (len(seq) // 2 - 1)
        named.append((f"output_{res}x{res}", OutputConvBlock(sizes[-1])))
        super().__init__(collections.OrderedDict(named))

    def forward(self, z):
        return super().forward(z.view(z.shape[0], z.shape[1], 1, 1))


# ---------------------------------------------------------------------------------------------
# Helpers for parity tests


def randomize_(model: nn.Module, seed: int, conv_std: str = "he") -> nn.Module:
    """Give every parameter and BN running statistic random, non-trivial values, in place.

    conv_std 'he': conv/linear weights N(0, 2/fan_in) (activations stay O(1) through depth);
    'unit': N(0, 1) (ProGAN's equalized-lr weights). Biases N(0, 0.1^2) (wscale.b N(0, 1)),
    BN scale U(0.5, 1.5), shift N(0, 0.1^2), running mean N(0, 0.1^2), running var U(0.5, 2).
    """
    g = torch.Generator().manual_seed(seed)

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=g) * std)

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                normal(m.weight, 1.0 if conv_std == "unit" else math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    normal(m.bias, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                uniform(m.weight, 0.5, 1.5)
                normal(m.bias, 0.1)
                normal(m.running_mean, 0.1)
                uniform(m.running_var, 0.5, 2.0)
            elif isinstance(m, WScale):
                normal(m.b, 1.0)
    return model.eval()


def state_dict_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state_dict as numpy arrays (what weight_conversion.read_pth returns)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def run_with_hooks(model: nn.Module, x: np.ndarray, retain: Iterable[str] = (),
                   snapshot: Iterable[str] = ()) -> tuple[np.ndarray, dict, dict]:
    """Forward `x` (NCHW numpy or z) through `model` with hooks on named modules.

    `retain`: keep each output tensor itself, detached but not copied, like the original's
    nethook.retain_layer, so a later in-place ReLU shows in it (the original's meaning of a conv
    layer). `snapshot`: copy the output when it is produced (the pre-in-place-ReLU value).
    Returns (output, retained, snapshots) as NCHW numpy.
    """
    modules = dict(model.named_modules())
    retained, snapped, handles = {}, {}, []
    for name in set(retain) | set(snapshot):
        if name not in modules:
            raise KeyError(f"reference model has no module {name!r}")

        def hook(_m, _inp, out, name=name):
            if name in retain:
                retained[name] = out.detach()
            if name in snapshot:
                snapped[name] = out.detach().clone()
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            y = model(torch.from_numpy(x))
    finally:
        for h in handles:
            h.remove()
    return (y.numpy(), {k: v.numpy() for k, v in retained.items()},
            {k: v.numpy() for k, v in snapped.items()})


def flax_capture(module, variables, x, layers: Sequence[str]):
    """Run a Linen module with `layers` (dotted paths) captured; returns (output, {name: array})."""
    import jax

    wanted = set(layers)

    @jax.jit
    def run(variables, x):
        return module.apply(variables, x, mutable=["intermediates"],
                            capture_intermediates=lambda m, method: method == "__call__"
                            and ".".join(m.path) in wanted)

    y, state = run(variables, x)
    acts = {}
    for name in layers:
        node = state["intermediates"]
        for part in name.split("."):
            node = node[part]
        acts[name] = np.asarray(node["__call__"][0])
    return np.asarray(y), acts


def nchw(x: np.ndarray) -> np.ndarray:
    """NHWC -> NCHW (leaves 2-D arrays alone)."""
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def assert_close(flax_value: np.ndarray, torch_value: np.ndarray, name: str, rel: float = 1e-4) -> float:
    """max |flax - torch| <= rel * max |torch|; returns the relative error."""
    flax_value = nchw(np.asarray(flax_value))
    assert flax_value.shape == torch_value.shape, (name, flax_value.shape, torch_value.shape)
    scale = float(np.max(np.abs(torch_value)))
    assert scale > 0, f"{name}: the torch activation is all zeros (a useless comparison)"
    err = float(np.max(np.abs(flax_value - torch_value)))
    assert err <= rel * scale, f"{name}: max abs diff {err:.3g} > {rel:g} x scale {scale:.3g}"
    return err / scale
