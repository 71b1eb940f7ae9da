"""PyTorch reference implementations of the segmenters, written from the description of the
original (unified parsing UPerNet, color PPM-deepsup, their segment_batch logic), for parity tests.

Module names and state-dict keys follow the original's; precise RoI pooling is integrated cell by
cell (a different route to the same exact integral than the JAX port's tent antiderivatives).
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(cin, cout, stride=1, dilation=1, bias=False):
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=bias)


def cbr(cin, cout):
    return nn.Sequential(conv3x3(cin, cout), nn.BatchNorm2d(cout), nn.ReLU())


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None, dilation=1, first_dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, first_dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = x if self.downsample is None else self.downsample(x)
        return F.relu(out + res)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, downsample=None, dilation=1, first_dilation=1):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride, first_dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        res = x if self.downsample is None else self.downsample(x)
        return F.relu(out + res)


class DeepStemResNet(nn.Module):
    """conv3x3(s2)-BN-ReLU, conv3x3-BN-ReLU, conv3x3-BN-ReLU, maxpool 3/2/1, four stages;
    `dilated` turns layer3/layer4 strides into dilations 2/4 (output stride 8)."""

    def __init__(self, block, layers, stem=(64, 64, 128), planes=(64, 128, 256, 512), dilated=False):
        super().__init__()
        self.conv1 = conv3x3(3, stem[0], 2)
        self.bn1 = nn.BatchNorm2d(stem[0])
        self.conv2 = conv3x3(stem[0], stem[1])
        self.bn2 = nn.BatchNorm2d(stem[1])
        self.conv3 = conv3x3(stem[1], stem[2])
        self.bn3 = nn.BatchNorm2d(stem[2])
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = stem[2]
        dil = (1, 1, 2, 4) if dilated else (1, 1, 1, 1)
        for s in range(4):
            stride = 1 if s == 0 else 2
            down = None
            if stride != 1 or cin != planes[s] * block.expansion:
                eff = 1 if dil[s] > 1 else stride
                down = nn.Sequential(nn.Conv2d(cin, planes[s] * block.expansion, 1, eff, bias=False),
                                     nn.BatchNorm2d(planes[s] * block.expansion))
            blocks = []
            for j in range(layers[s]):
                if dil[s] > 1:
                    st, fd = 1, (dil[s] // 2 if j == 0 else dil[s])
                else:
                    st, fd = (stride if j == 0 else 1), 1
                blocks.append(block(cin, planes[s], st, down if j == 0 else None, dil[s], fd))
                cin = planes[s] * block.expansion
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        outs = []
        for s in range(1, 5):
            x = getattr(self, f"layer{s}")(x)
            outs.append(x)
        return outs


def prroi_pool_reference(x: torch.Tensor, box, ph: int, pw: int) -> torch.Tensor:
    """Precise RoI pooling of NCHW `x` over box (x0, y0, x1, y1), integrated cell by cell: on
    each unit cell the bilinear surface is integrated exactly over its overlap with the bin."""
    n, c, h, w = x.shape
    x0, y0, x1, y1 = [float(v) for v in box]
    bh, bw = max(y1 - y0, 0.0) / ph, max(x1 - x0, 0.0) / pw
    out = x.new_zeros(n, c, ph, pw)
    if bh * bw == 0:
        return out

    def val(i, j):
        if 0 <= i < h and 0 <= j < w:
            return x[:, :, i, j]
        return x.new_zeros(n, c)

    def lin(a, b):  # integrals of (1 - u) and u over [a, b] within a unit cell
        return (b - a) - (b * b - a * a) / 2, (b * b - a * a) / 2

    for p in range(ph):
        ya, yb = y0 + p * bh, y0 + (p + 1) * bh
        for q in range(pw):
            xa, xb = x0 + q * bw, x0 + (q + 1) * bw
            acc = x.new_zeros(n, c)
            for i in range(int(np.floor(ya)), int(np.ceil(yb))):
                sa, sb = max(ya, i) - i, min(yb, i + 1) - i
                if sb <= sa:
                    continue
                wy0, wy1 = lin(sa, sb)
                for j in range(int(np.floor(xa)), int(np.ceil(xb))):
                    ta, tb = max(xa, j) - j, min(xb, j + 1) - j
                    if tb <= ta:
                        continue
                    wx0, wx1 = lin(ta, tb)
                    acc = acc + (val(i, j) * wy0 * wx0 + val(i + 1, j) * wy1 * wx0
                                 + val(i, j + 1) * wy0 * wx1 + val(i + 1, j + 1) * wy1 * wx1)
            out[:, :, p, q] = acc / (bh * bw)
    return out


class UPerNet(nn.Module):
    def __init__(self, nr, fc_dim=2048, fpn_inplanes=(256, 512, 1024, 2048), fpn_dim=512,
                 ppm_dim=512, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        self.pool_scales = pool_scales
        self.ppm_conv = nn.ModuleList([nn.Sequential(nn.Conv2d(fc_dim, ppm_dim, 1, bias=False),
                                                     nn.BatchNorm2d(ppm_dim), nn.ReLU())
                                       for _ in pool_scales])
        self.ppm_last_conv = cbr(fc_dim + len(pool_scales) * ppm_dim, fpn_dim)
        self.fpn_in = nn.ModuleList([nn.Sequential(nn.Conv2d(c, fpn_dim, 1, bias=False),
                                                   nn.BatchNorm2d(fpn_dim), nn.ReLU())
                                     for c in fpn_inplanes[:-1]])
        self.fpn_out = nn.ModuleList([nn.Sequential(cbr(fpn_dim, fpn_dim)) for _ in fpn_inplanes[:-1]])
        self.conv_fusion = cbr(len(fpn_inplanes) * fpn_dim, fpn_dim)
        self.scene_head = nn.Sequential(cbr(fpn_dim, fpn_dim), nn.AdaptiveAvgPool2d(1),
                                        nn.Conv2d(fpn_dim, nr["scene"], 1))
        self.object_head = nn.Sequential(cbr(fpn_dim, fpn_dim), nn.Conv2d(fpn_dim, nr["object"], 1))
        self.part_head = nn.Sequential(cbr(fpn_dim, fpn_dim), nn.Conv2d(fpn_dim, nr["part"], 1))
        self.material_head = nn.Sequential(cbr(fpn_dim, fpn_dim), nn.Conv2d(fpn_dim, nr["material"], 1))

    def forward(self, conv_out):
        conv5 = conv_out[-1]
        h, w = conv5.shape[2:]
        ppm = [conv5]
        for s, pconv in zip(self.pool_scales, self.ppm_conv):
            pooled = prroi_pool_reference(conv5, (0, 0, w, h), s, s)
            ppm.append(pconv(F.interpolate(pooled, (h, w), mode="bilinear", align_corners=False)))
        f = self.ppm_last_conv(torch.cat(ppm, 1))
        scene = self.scene_head(f)[:, :, 0, 0]
        feats = [f]
        for i in reversed(range(len(conv_out) - 1)):
            lat = self.fpn_in[i](conv_out[i])
            f = lat + F.interpolate(f, size=lat.shape[2:], mode="bilinear", align_corners=False)
            feats.append(self.fpn_out[i](f))
        feats.reverse()
        material = self.material_head(feats[0])
        size = feats[0].shape[2:]
        fused = torch.cat([feats[0]] + [F.interpolate(p, size, mode="bilinear", align_corners=False)
                                        for p in feats[1:]], 1)
        x = self.conv_fusion(fused)
        return {"object": self.object_head(x), "part": self.part_head(x),
                "material": material, "scene": scene}


class PPMDeepsup(nn.Module):
    def __init__(self, num_class, fc_dim=512, ppm_dim=512, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        self.ppm = nn.ModuleList([nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(fc_dim, ppm_dim, 1, bias=False),
                                                nn.BatchNorm2d(ppm_dim), nn.ReLU()) for s in pool_scales])
        self.cbr_deepsup = cbr(fc_dim // 2, fc_dim // 4)
        self.conv_last = nn.Sequential(nn.Conv2d(fc_dim + len(pool_scales) * ppm_dim, ppm_dim, 3, padding=1, bias=False),
                                       nn.BatchNorm2d(ppm_dim), nn.ReLU(), nn.Dropout2d(0.1),
                                       nn.Conv2d(ppm_dim, num_class, 1))
        self.conv_last_deepsup = nn.Conv2d(fc_dim // 4, num_class, 1)

    def forward(self, conv_out):
        conv5 = conv_out[-1]
        size = conv5.shape[2:]
        ppm = [conv5] + [F.interpolate(p(conv5), size, mode="bilinear", align_corners=False) for p in self.ppm]
        return self.conv_last(torch.cat(ppm, 1))


class EncoderDecoder(nn.Module):
    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, x):
        return self.decoder(self.encoder(x))


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and random BatchNorm statistics (variance-preserving scales), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()


def build_upp(labeldata, stage_sizes=(3, 4, 6, 3), stem=(64, 64, 128), planes=(64, 128, 256, 512),
              fpn_dim=512, ppm_dim=512, seed=0) -> EncoderDecoder:
    nr = {k: len(labeldata[k]) for k in ("object", "material", "scene")}
    nr["part"] = sum(len(v) for v in labeldata["object_part"].values())
    enc = DeepStemResNet(Bottleneck, stage_sizes, stem, planes)
    dec = UPerNet(nr, planes[-1] * 4, tuple(p * 4 for p in planes), fpn_dim, ppm_dim)
    model = randomize(EncoderDecoder(enc, dec), seed)
    with torch.no_grad():  # UPP inputs are 0..255 less the mean (no std): so are trained stats
        model.encoder.bn1.running_var.mul_(60.0 ** 2)
    return calibrate_heads(model, {"object": model.decoder.object_head[1], "part": model.decoder.part_head[1],
                                   "material": model.decoder.material_head[1], "scene": model.decoder.scene_head[2]},
                           torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 60)


def calibrate_heads(model, heads, x, target=3.0):
    """Scale and centre each classifier so its logits have mean 0 and std `target` on `x`: random
    deep nets otherwise give logits in the thousands (saturated softmax, one class everywhere)."""
    with torch.no_grad():
        out = model(x)
        for name, conv in heads.items():
            y = out[name] if isinstance(out, dict) else out
            y = y - conv.bias.view(1, -1, *([1] * (y.dim() - 2)))
            dims = [0] + list(range(2, y.dim()))
            mean = y.mean(dims)
            factor = target / float((y - mean.view(1, -1, *([1] * (y.dim() - 2)))).std())
            conv.weight.mul_(factor)
            conv.bias.copy_(-mean * factor)  # centred classes: the argmax varies over the image
    return model


def build_color(num_class, stage_sizes=(2, 2, 2, 2), stem=(64, 64, 128), planes=(64, 128, 256, 512),
                ppm_dim=512, seed=0) -> EncoderDecoder:
    enc = DeepStemResNet(BasicBlock, stage_sizes, stem, planes, dilated=True)
    model = randomize(EncoderDecoder(enc, PPMDeepsup(num_class, planes[-1], ppm_dim)), seed)
    return calibrate_heads(model, {"logits": model.decoder.conv_last[4]},
                           torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed)))


def state_dicts(model: EncoderDecoder):
    """(encoder, decoder) state dicts as numpy arrays, like weight_conversion.read_pth returns."""
    return ({k: v.numpy().copy() for k, v in model.encoder.state_dict().items()},
            {k: v.numpy().copy() for k, v in model.decoder.state_dict().items()})


# ------------------------------------------------------------------------------------------
# segment_batch logic of the original, with the port's decided fixes

def components_bfs(a: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of equal nonzero values, numbered 1.. in raster order."""
    h, w = a.shape
    lab = np.zeros((h, w), np.int64)
    n = 0
    for y in range(h):
        for x in range(w):
            if a[y, x] == 0 or lab[y, x]:
                continue
            n += 1
            lab[y, x] = n
            q = deque([(y, x)])
            while q:
                cy, cx = q.popleft()
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and not lab[ny, nx] and a[ny, nx] == a[y, x]:
                            lab[ny, nx] = n
                            q.append((ny, nx))
    return lab, n


def quad_reference(objects: np.ndarray, num_objects: int) -> np.ndarray:
    """(N, H, W) objects -> (N, 2, H, W): every component split at its bounding box middle."""
    out = np.zeros((objects.shape[0], 2) + objects.shape[1:], np.int64)
    for i, o in enumerate(objects):
        out[i, 0] = o
        out[i, 1] = o
        lab, n = components_bfs(o)
        for k in range(1, n + 1):
            m = lab == k
            rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
            vmid = (rows[0] + rows[-1] + 1) // 2
            hmid = (cols[0] + cols[-1] + 1) // 2
            top = m.copy()
            top[vmid:] = False
            left = m.copy()
            left[:, hmid:] = False
            out[i, 0] += num_objects * (top * 1 + (m & ~top) * 3)
            out[i, 1] += num_objects * (left * 2 + (m & ~left) * 4)
    out[out <= num_objects] = 0
    return out


def upp_reference(model, labeldata, images_nhwc: np.ndarray, downsample=1, segsizes=(256,),
                  quad=False, all_parts=False):
    """(probabilities, raw logits of the last size, labels, segmentation) of the UPP segmenter."""
    x = torch.from_numpy(np.asarray(images_nhwc, np.float32)).permute(0, 3, 1, 2)
    x = (x + 1) / 2 * 255
    x = torch.flip(x, (1,)) - torch.tensor([102.9801, 115.9465, 122.7717])[None, :, None, None]
    h, w = x.shape[2:]
    seg_shape = (h // downsample, w // downsample)
    objects, materials, op = labeldata["object"], labeldata["material"], labeldata["object_part"]
    oid = {k: i for i, k in enumerate(objects)}
    with_part = sorted(oid[k] for k in op)  # decoder group order: ascending object id
    probs = {"object": 0, "material": 0, "parts": None}
    group_probs = {}
    with torch.no_grad():
        for s in segsizes:
            r = x if (h, w) == (s, s) else F.adaptive_avg_pool2d(x, (s, s))
            raw = model(r)
            for k in ("object", "material"):
                probs[k] = probs[k] + F.softmax(F.interpolate(raw[k], seg_shape, mode="bilinear",
                                                              align_corners=False), 1)
            part = F.interpolate(raw["part"], seg_shape, mode="bilinear", align_corners=False)
            head = 0
            for o in with_part:
                n = len(op[objects[o]])
                group_probs[o] = group_probs.get(o, 0) + F.softmax(part[:, head:head + n], 1)
                head += n
    mult = 5 if quad else 1
    nobj = len(objects) - 1
    first_part = nobj * mult + 1 + len(materials) - 1
    owners = list(op) if all_parts else ["sky", "building", "person"]
    pnum, pnames, trans = {}, [], []
    for owner in owners:
        t = []
        for p in op[owner]:
            if p in oid:
                t.append(oid[p])
            else:
                if p not in pnum:
                    pnum[p] = first_part + len(pnames)
                    pnames.append(p)
                t.append(pnum[p])
        trans.append(torch.tensor(t))
    labels = [("-", "-")] + [(o, "object") for o in objects[1:]]
    if quad:
        for suf in "tlbr":
            labels += [(f"{o}-{suf}", "part") for o in objects[1:]]
    labels += [(m, "material") for m in materials[1:]] + [(p, "part") for p in pnames]
    segs = torch.zeros(x.shape[0], 5 if quad else 3, *seg_shape, dtype=torch.long)
    segs[:, 0] = probs["object"].argmax(1)
    mat = probs["material"].argmax(1)
    segs[:, 1] = torch.where(mat == 0, 0, mat + nobj * mult)
    for owner, t in zip(owners, trans):
        o = oid[owner]
        seg = t[group_probs[o].argmax(1)]  # the group of this owner, found by object id
        mask = segs[:, 0] == o
        segs[:, 2][mask] = seg[mask]
    if quad:
        segs[:, 3:] = torch.from_numpy(quad_reference(segs[:, 0].numpy(), nobj))
    probs["parts"] = [group_probs[oid[o]] for o in owners]
    return probs, raw, labels, segs.numpy()


def color_reference(model, meta, images_nhwc: np.ndarray, downsample=1, segsizes=(256,)):
    """(per-category probabilities, raw logits, labels, segmentation) of the color segmenter."""
    x = torch.from_numpy(np.asarray(images_nhwc, np.float32)).permute(0, 3, 1, 2)
    fmt = meta["imageformat"]
    if fmt.get("byteorder") == "BGR":
        x = torch.flip(x, (1,))
    x = ((x + 1) / 2 - torch.tensor(fmt["mean"])[None, :, None, None]) / torch.tensor(fmt["stdev"])[None, :, None, None]
    h, w = x.shape[2:]
    seg_shape = (h // downsample, w // downsample)
    cats = [c["name"] for c in meta["categories"]]
    chans = {c: [i for i, l in enumerate(meta["labels"]) if l["category"] == c] for c in cats}
    total = 0
    with torch.no_grad():
        for s in segsizes:
            r = x if (h, w) == (s, s) else F.adaptive_avg_pool2d(x, (s, s))
            raw = model(r)
            p = F.softmax(F.interpolate(raw, seg_shape, mode="bilinear", align_corners=False), 1)
            q = torch.empty_like(p)
            for idx in chans.values():
                q[:, idx] = F.softmax(p[:, idx], 1)
            total = total + q
    labelmap, labels = {"-": 0}, [("-", "-")]
    for l in meta["labels"]:
        if l.get("internal") or l["name"] in labelmap:
            continue
        labelmap[l["name"]] = len(labels)
        labels.append((l["name"], l["category"]))
    catseg = {c: total[:, idx].argmax(1) for c, idx in chans.items()}
    where = {}
    for c, idx in chans.items():
        for k, i in enumerate(idx):
            where[meta["labels"][i]["name"]] = (c, k)
    segs = torch.zeros(x.shape[0], len(cats), *seg_shape, dtype=torch.long)
    for ci, c in enumerate(meta["categories"]):
        cmap = torch.tensor([labelmap.get(meta["labels"][i]["name"], 0) for i in chans[c["name"]]])
        t = cmap[catseg[c["name"]]]
        if c.get("mask"):
            mc, mk = where[c["mask"]]
            t = t * (catseg[mc] == mk).long()
        segs[:, ci] = t
    return total, raw, labels, segs.numpy()
