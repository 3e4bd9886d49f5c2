#!/usr/bin/env python3
"""torch_flow.py: a cincflow checkpoint as a PyTorch module, with log_prob, encode, decode and
sample.

    torch_flow.py CHECKPOINT [--data SPEC | --synthetic N] [--split test|train] [--limit N]
                  [--batch N] [--dtype float64|float32] [--per-image] [--json]
                  [--round-trip N] [--temperature T] [--sample N --out FILE.npy] [--seed S]

Reads the HDF5 file written by `cincflow train` (with h5py; no cincflow code), builds one
torch.nn.Module per layer of the architecture the file stores (/arch; a format-1 file's built-in
model from /config), the parameters as nn.Parameters from /params and the state as buffers from
/state, and prints the mean bits/dim of the images, `test bpd: X` (or one JSON object), with the
images dequantized at the midpoint of their bins (x = k/256 - 0.5 + 1/512) as `cincflow eval
--dequant midpoint` does. The math of every kind, and the data specs, are those of
examples/load_checkpoint.py (its docstring is the reference; this file imports its readers).

From Python (the examples/ folder on sys.path):

    import torch, torch_flow
    flow = torch_flow.Flow.from_checkpoint("model.h5")     # float64 (flow.float(): float32,
    x = torch_flow.dequantize(images)                      # then dequantize(images, torch.float32))
    logp = flow.log_prob(x)                                # (B,) nats, differentiable
    z, logp = flow.encode(x)                               # latents, in the order factored out
    x2, _ = flow.decode(z)                                 # the inverse (and the latents used)
    x3, z3 = flow.sample(16, temperature=0.7, generator=torch.Generator().manual_seed(1))

Each module's forward(x) returns (y, log|det| per image, log-density per image, latent or
None); inverse(y, z) undoes it (split and prior take their latent z, or draw it when z is None).
The inverses: squeeze unsqueezes; actnorm x = y exp(-logs) - bias; invconv1x1 multiplies by
W^-1; a masked convolution is solved pixel by pixel (raster order for the cinc and
emerging_causal masks, reverse raster order for emerging_anticausal), each pixel's channels by
a triangular solve with the current-pixel tap once the pixels its other taps read are known;
emerging_conv inverts its three parts in reverse order; a coupling recovers its blocks in order
(x_{k+1} = y_{k+1} / s_k - t_k, the networks fed the blocks already recovered); split
concatenates its kept channels and the latent; the prior returns its latent. A latent drawn
at temperature T is mean + T exp(logs) eps, eps ~ N(0, 1). Sampling needs the flow to end in
a prior, and its only one (a prior earlier in the list passes its input on in the forward
direction, but its inverse cannot use what the layers after it decoded).

--round-trip N draws N latents at --temperature (default 0.7), decodes them and encodes the
images again, and prints the largest |z - encode(decode(z))|; it also prints the largest
|x - decode(encode(x))| over the first N evaluated images. --sample N --out FILE.npy writes N
drawn images quantized to uint8 (N, H, W, C), which `load_checkpoint.py --data npy:FILE` reads.

Not here: training (the modules are differentiable, so a user can), uniform dequantization,
cincflow's synthetic: images, speed (the masked-convolution inverses loop over pixels in Python).
"""
import argparse
import json
import math
import os
import sys

try:
    import h5py  # noqa: F401  (load_checkpoint.py reads the file with it)
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as e:
    sys.exit(f"torch_flow.py: needs {e.name} (Debian: apt-get install python3-torch python3-numpy "
             "python3-h5py)")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load_checkpoint as lc  # noqa: E402  (the checkpoint, the architecture, the data)

PROG = "torch_flow.py"
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
ModelError = lc.ModelError
UNINITIALIZED = []  # actnorms initialised from data here, in order


def parameter(ck, name, shape):
    return nn.Parameter(torch.from_numpy(ck.param(name, shape)))


def buffer(ck, name, shape):
    return torch.from_numpy(ck.buffer(name, shape))


def per_image(v):
    return v.reshape(v.shape[0], -1).sum(dim=1)


def gaussian_logp(z, mean, logs):
    """Per image: sum of log N(z; mean, exp(logs)) over every axis but the first."""
    e = (z - mean) * torch.exp(-logs)
    return per_image(-HALF_LOG_2PI - logs - 0.5 * e * e)


def draw(mean, logs, temperature, generator):
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    return mean + temperature * torch.exp(logs) * eps


def conv_nhwc(x, w, pad):
    """y = conv(x, w) on NHWC x and HWIO w, x zero-padded by pad = (top, left, bottom, right)."""
    top, left, bottom, right = pad
    xp = F.pad(x.permute(0, 3, 1, 2), (left, right, top, bottom))
    return F.conv2d(xp, w.permute(3, 2, 0, 1)).permute(0, 2, 3, 1)


def conv_same(x, w):
    p = (w.shape[0] - 1) // 2
    return conv_nhwc(x, w, (p, p, p, p))


def zeros(x):
    return x.new_zeros(x.shape[0])


class ActnormParams(nn.Module):
    """y = (x + bias) * exp(logs) per channel; initialised from the first batch when the
    checkpoint's flag says it never was (bias = -mean, logs = -log(std + 1e-6))."""

    def __init__(self, ck, name, c):
        super().__init__()
        self.name = name
        self.bias = parameter(ck, name + ".bias", (c,))
        self.logs = parameter(ck, name + ".logs", (c,))
        self.register_buffer("initialized", buffer(ck, name + ".initialized", ()))

    def forward(self, x):
        if self.initialized.item() == 0.0:
            with torch.no_grad():
                v = x.reshape(-1, x.shape[-1])
                mean = v.mean(dim=0)
                std = ((v - mean) ** 2).mean(dim=0).sqrt()
                self.bias.copy_(-mean)
                self.logs.copy_(-torch.log(std + 1e-6))
                self.initialized.fill_(1.0)
            if not UNINITIALIZED:
                print(f"{PROG}: {self.name} (and maybe other actnorms) was never initialized: "
                      "each takes its initialisation from the first batch it sees, so the "
                      "result depends on --batch", file=sys.stderr)
            UNINITIALIZED.append(self.name)
        return (x + self.bias) * torch.exp(self.logs)

    def inverse(self, y):
        return y * torch.exp(-self.logs) - self.bias


class ZeroConv(nn.Module):
    """Glow's conv2d_zeros: (conv3x3_same(x, weight) + bias) * exp(3 logs)."""

    def __init__(self, ck, name, cin, cout):
        super().__init__()
        self.weight = parameter(ck, name + ".weight", (3, 3, cin, cout))
        self.bias = parameter(ck, name + ".bias", (cout,))
        self.logs = parameter(ck, name + ".logs", (cout,))

    def forward(self, x):
        return (conv_same(x, self.weight) + self.bias) * torch.exp(3.0 * self.logs)


# ---- one module per kind -------------------------------------------------------------------------


class Layer(nn.Module):
    """A flow layer: forward(x) -> (y, log|det| per image, log-density per image, latent or
    None); inverse(y, z=None, temperature, generator) -> x."""

    factors_out = False

    def __init__(self, name, shape):
        super().__init__()
        self.name, self.in_shape, self.out_shape = name, tuple(shape), tuple(shape)


class Squeeze(Layer):
    def __init__(self, ck, name, shape):
        super().__init__(name, shape)
        h, w, c = shape
        if h % 2 or w % 2:
            raise ModelError(f"{name}: cannot squeeze {h}x{w} images")
        self.out_shape = (h // 2, w // 2, 4 * c)

    def forward(self, x):
        b, h, w, c = x.shape
        y = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, h // 2, w // 2, 4 * c), zeros(x), zeros(x), None

    def inverse(self, y, z=None, temperature=1.0, generator=None):
        b, h, w, c4 = y.shape
        c = c4 // 4
        x = y.reshape(b, h, w, c, 2, 2).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, 2 * h, 2 * w, c)


class Actnorm(Layer):
    def __init__(self, ck, name, shape):
        super().__init__(name, shape)
        self.an = ActnormParams(ck, name, shape[2])

    def forward(self, x):
        y = self.an(x)
        ld = self.in_shape[0] * self.in_shape[1] * self.an.logs.sum()
        return y, ld.expand(x.shape[0]), zeros(x), None

    def inverse(self, y, z=None, temperature=1.0, generator=None):
        return self.an.inverse(y)


class Invconv1x1(Layer):
    def __init__(self, ck, name, shape):
        super().__init__(name, shape)
        c = shape[2]
        self.lower = parameter(ck, name + ".lower", (c, c))
        self.upper = parameter(ck, name + ".upper", (c, c))
        self.log_s = parameter(ck, name + ".log_s", (c,))
        perm = ck.buffer(name + ".perm", (c,)).astype(np.int64)
        if sorted(perm.tolist()) != list(range(c)):
            raise ModelError(f"{name}.perm is not a permutation of 0..{c - 1}")
        self.register_buffer("perm", torch.from_numpy(perm))
        self.register_buffer("sign", buffer(ck, name + ".sign", (c,)))

    def matrix(self):
        """W = P (L + I) (U + diag(sign exp(log_s))), P[r][j] = [j == perm[r]]."""
        c = self.log_s.shape[0]
        eye = torch.eye(c, dtype=self.log_s.dtype)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * torch.exp(self.log_s))
        return eye[self.perm] @ lower @ upper

    def forward(self, x):
        ld = self.in_shape[0] * self.in_shape[1] * self.log_s.sum()
        return x @ self.matrix(), ld.expand(x.shape[0]), zeros(x), None

    def inverse(self, y, z=None, temperature=1.0, generator=None):
        return y @ torch.linalg.inv(self.matrix())


MASKS = ("cinc", "emerging_causal", "emerging_anticausal")


class MaskedConv(Layer):
    """y = conv(x, weight * mask) + bias (the masks of load_checkpoint.py); inverse pixel by
    pixel."""

    def __init__(self, ck, name, shape, mask):
        super().__init__(name, shape)
        if mask not in MASKS:
            raise ModelError(f"{name}: unknown mask '{mask}' ({', '.join(MASKS)})")
        c = shape[2]
        m, self.centre = lc.conv_mask(mask, c)
        self.mask_kind, self.pad = mask, lc.MASK_PADDING[mask]
        self.register_buffer("mask", torch.from_numpy(m))
        self.weight = parameter(ck, name + ".weight", (3, 3, c, c))
        self.bias = parameter(ck, name + ".bias", (c,))
        diag = torch.diagonal(self.masked_weight()[self.centre, self.centre])
        if torch.any(diag == 0):
            raise ModelError(f"{name}: the current-pixel tap is singular")

    def masked_weight(self):
        return self.weight * self.mask

    def forward(self, x):
        w = self.masked_weight()
        diag = torch.diagonal(w[self.centre, self.centre])
        ld = self.in_shape[0] * self.in_shape[1] * torch.log(torch.abs(diag)).sum()
        return conv_nhwc(x, w, self.pad) + self.bias, ld.expand(x.shape[0]), zeros(x), None

    def inverse(self, y, z=None, temperature=1.0, generator=None):
        b, h, w_, c = y.shape
        w = self.masked_weight()
        ctr, (top, left) = self.centre, self.pad[:2]
        centre = w[ctr, ctr]  # (c_in, c_out): y_pixel = x_pixel @ centre + other taps
        lower = self.mask_kind != "emerging_anticausal"  # centre[c][o] kept for c >= o
        taps = [(a, d) for a in range(3) for d in range(3)
                if (a, d) != (ctr, ctr) and bool(self.mask[a, d].any())]
        pixels = [(i, j) for i in range(h) for j in range(w_)]
        if not lower:
            pixels.reverse()
        r0 = y - self.bias
        x = torch.zeros_like(y)
        for i, j in pixels:  # every pixel another tap reads is already solved
            r = r0[:, i, j, :]
            for a, d in taps:
                ii, jj = i + a - top, j + d - left
                if 0 <= ii < h and 0 <= jj < w_:
                    r = r - x[:, ii, jj, :] @ w[a, d]
            x[:, i, j, :] = torch.linalg.solve_triangular(centre, r, upper=not lower, left=False)
        return x


class EmergingConv(Layer):
    """invconv1x1 <name>.1x1, masked_conv <name>.causal, masked_conv <name>.anticausal."""

    def __init__(self, ck, name, shape):
        super().__init__(name, shape)
        self.parts = nn.ModuleList([
            Invconv1x1(ck, name + ".1x1", shape),
            MaskedConv(ck, name + ".causal", shape, "emerging_causal"),
            MaskedConv(ck, name + ".anticausal", shape, "emerging_anticausal")])

    def forward(self, x):
        logdet = zeros(x)
        for part in self.parts:
            x, ld, _, _ = part(x)
            logdet = logdet + ld
        return x, logdet, zeros(x), None

    def inverse(self, y, z=None, temperature=1.0, generator=None):
        for part in reversed(self.parts):
            y = part.inverse(y)
        return y


class CouplingNet(nn.Module):
    """NN(u) = zero_conv(relu(actnorm2(conv1x1(relu(actnorm1(conv3x3(u)))))))."""

    def __init__(self, ck, name, cin, cout, hidden):
        super().__init__()
        self.conv1 = parameter(ck, name + ".conv1.weight", (3, 3, cin, hidden))
        self.actnorm1 = ActnormParams(ck, name + ".actnorm1", hidden)
        self.conv2 = parameter(ck, name + ".conv2.weight", (1, 1, hidden, hidden))
        self.actnorm2 = ActnormParams(ck, name + ".actnorm2", hidden)
        self.out = ZeroConv(ck, name + ".out", hidden, cout)

    def forward(self, u):
        h = torch.relu(self.actnorm1(conv_same(u, self.conv1)))
        h = torch.relu(self.actnorm2(conv_same(h, self.conv2)))
        return self.out(h)


class Coupling(Layer):
    """affine: blocks [xa, xb]; quad: [x1, x2, x3, x4]; block k + 1 becomes
    (x_{k+1} + t) sigmoid(l + 2) with (t, l) interleaved in nets.k(blocks 0..k)."""

    def __init__(self, ck, name, shape, kind, hidden):
        super().__init__(name, shape)
        self.edges = e = lc.coupling_edges(name, kind, shape[2])
        self.nets = nn.ModuleList([
            CouplingNet(ck, f"{name}.nets.{k}", e[k + 1], 2 * (e[k + 2] - e[k + 1]), hidden)
            for k in range(len(e) - 2)])

    def scale_shift(self, k, u):
        h = self.nets[k](u)
        return h[..., 0::2], h[..., 1::2] + 2.0

    def forward(self, x):
        e = self.edges
        blocks, logdet = [x[..., :e[1]]], zeros(x)
        for k in range(len(self.nets)):
            t, l = self.scale_shift(k, x[..., :e[k + 1]])  # the input blocks before k + 1
            blocks.append((x[..., e[k + 1]:e[k + 2]] + t) * torch.sigmoid(l))
            logdet = logdet + per_image(F.logsigmoid(l))
        return torch.cat(blocks, dim=-1), logdet, zeros(x), None

    def inverse(self, y, z=None, temperature=1.0, generator=None):
        e = self.edges
        x = y[..., :e[1]]
        for k in range(len(self.nets)):
            t, l = self.scale_shift(k, x)
            x = torch.cat([x, y[..., e[k + 1]:e[k + 2]] / torch.sigmoid(l) - t], dim=-1)
        return x


class Split(Layer):
    factors_out = True

    def __init__(self, ck, name, shape):
        super().__init__(name, shape)
        h, w, c = shape
        if c < 2:
            raise ModelError(f"{name}: cannot split images of {c} channel")
        self.kept, self.out = c // 2, c - c // 2
        self.out_shape = (h, w, self.kept)
        self.prior = ZeroConv(ck, name + ".prior", self.kept, 2 * self.out)

    def gaussian(self, x1):
        h = self.prior(x1)
        return h[..., :self.out], h[..., self.out:]

    def forward(self, x):
        x1, z = x[..., :self.kept], x[..., self.kept:]
        mean, logs = self.gaussian(x1)
        return x1, zeros(x), gaussian_logp(z, mean, logs), z

    def inverse(self, y, z=None, temperature=1.0, generator=None):
        if z is None:
            z = draw(*self.gaussian(y), temperature, generator)
        return torch.cat([y, z], dim=-1)


class Prior(Layer):
    factors_out = True

    def __init__(self, ck, name, shape):
        super().__init__(name, shape)
        self.mean = parameter(ck, name + ".mean", (1,) + tuple(shape))
        self.logs = parameter(ck, name + ".logs", (1,) + tuple(shape))

    def forward(self, x):
        return x, zeros(x), gaussian_logp(x, self.mean, self.logs), x

    def inverse(self, y, z=None, temperature=1.0, generator=None, n=None):
        if z is not None:
            return z
        mean = self.mean.expand((n,) + self.in_shape)
        return draw(mean, self.logs.expand_as(mean), temperature, generator)


KINDS = {
    "squeeze": lambda ck, s, shape: Squeeze(ck, s["name"], shape),
    "actnorm": lambda ck, s, shape: Actnorm(ck, s["name"], shape),
    "cinc_conv": lambda ck, s, shape: MaskedConv(ck, s["name"], shape, "cinc"),
    "masked_conv": lambda ck, s, shape: MaskedConv(ck, s["name"], shape, lc.hparam(s, "mask")),
    "invconv1x1": lambda ck, s, shape: Invconv1x1(ck, s["name"], shape),
    "emerging_conv": lambda ck, s, shape: EmergingConv(ck, s["name"], shape),
    "affine_coupling": lambda ck, s, shape: Coupling(ck, s["name"], shape, "affine",
                                                     int(lc.hparam(s, "hidden"))),
    "quad_coupling": lambda ck, s, shape: Coupling(ck, s["name"], shape, "quad",
                                                   int(lc.hparam(s, "hidden"))),
    "split": lambda ck, s, shape: Split(ck, s["name"], shape),
    "prior": lambda ck, s, shape: Prior(ck, s["name"], shape),
}


# ---- the flow ------------------------------------------------------------------------------------


class Flow(nn.Module):
    """The checkpoint's layers in order (self.layers, each with its checkpoint name .name)."""

    def __init__(self, ck):
        super().__init__()
        self.shape, specs = lc.architecture(ck)
        self.step = ck.step
        layers, shape = [], self.shape
        for spec in specs:
            if spec["kind"] not in KINDS:
                provider = spec.get("provider") or "no provider"
                raise ModelError(f"layer '{spec['name']}' has kind '{spec['kind']}' (provider: "
                                 f"{provider}), which {PROG} does not implement; it knows "
                                 + ", ".join(KINDS))
            if "in" in spec and spec["in"] != shape:
                raise ModelError(f"{ck.path}: layer '{spec['name']}' is said to take "
                                 f"{spec['in']} but receives {shape}")
            layer = KINDS[spec["kind"]](ck, spec, shape)
            shape = layer.out_shape
            if "out" in spec and spec["out"] != shape:
                raise ModelError(f"{ck.path}: layer '{spec['name']}' is said to give "
                                 f"{spec['out']} but gives {shape}")
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        extra = ck.unused()
        if extra:
            raise ModelError(f"{ck.path}: tensors this model does not use: {', '.join(extra[:5])}"
                             + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""))

    @classmethod
    def from_checkpoint(cls, path):
        """The flow of a checkpoint file, in float64."""
        return cls(lc.Checkpoint(path))

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    def encode(self, x):
        """(latents in the order they are factored out, log p(x) per image) of images x
        (B, H, W, C), dequantized."""
        logdet, logp, latents = zeros(x), zeros(x), []
        for layer in self.layers:
            x, ld, lp, z = layer(x)
            logdet, logp = logdet + ld, logp + lp
            if z is not None:
                latents.append(z)
        return latents, logp + logdet

    def log_prob(self, x):
        """log p(x) per image, in nats."""
        return self.encode(x)[1]

    def bpd(self, x):
        d = float(np.prod(self.shape))
        return -(self.log_prob(x) - d * math.log(256.0)) / (d * math.log(2.0))

    def decode(self, latents=None, n=None, temperature=1.0, generator=None):
        """Images from latents (encode's list; missing ones, all when None, are drawn for n
        images at temperature), and the latents used."""
        if not self.layers or not isinstance(self.layers[-1], Prior):
            raise ModelError("decoding needs a flow that ends in a prior")
        early = [layer.name for layer in self.layers[:-1] if isinstance(layer, Prior)]
        if early:  # its inverse would discard what the layers after it decoded
            raise ModelError(f"decoding needs the last layer to be the only prior; layer "
                             f"'{early[0]}' is a prior too")
        given = list(latents or [])
        used, x = [], None
        for layer in reversed(self.layers):
            if layer.factors_out:
                z = given.pop() if given else None
                if isinstance(layer, Prior):
                    x = layer.inverse(x, z, temperature, generator, n=n)
                    used.append(x)
                else:
                    x = layer.inverse(x, z, temperature, generator)
                    used.append(x[..., layer.kept:])
            else:
                x = layer.inverse(x)
        return x, used[::-1]

    @torch.no_grad()
    def sample(self, n, temperature=1.0, generator=None):
        """n images drawn at temperature (B, H, W, C), and their latents."""
        return self.decode(None, n, temperature, generator)


def dequantize(k, dtype=torch.float64):
    """uint8 images (B, H, W, C) at the midpoint of each pixel's bin: k/256 - 0.5 + 1/512."""
    return (torch.from_numpy(np.array(k, dtype=np.float64)).to(dtype) + 0.5) / 256.0 - 0.5


def quantize(x):
    return np.clip(np.floor((x.detach().cpu().numpy() + 0.5) * 256.0), 0, 255).astype(np.uint8)


# ---- the command ---------------------------------------------------------------------------------


def main(argv):
    ap = argparse.ArgumentParser(prog=PROG, description="Bits/dim of images under a cincflow "
                                 "checkpoint, computed in PyTorch from the HDF5 file alone.")
    ap.add_argument("checkpoint")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--data", help="idx:FILE, fashion-mnist[:DIR], cifar10:DIR, png:DIR or "
                     "npy:FILE (default: the data the checkpoint was trained on)")
    src.add_argument("--synthetic", type=int, metavar="N",
                     help="N images of uniformly random pixels (numpy's generator, --seed)")
    ap.add_argument("--split", choices=("test", "train"), default="test",
                    help="split of fashion-mnist and cifar10 (default test)")
    ap.add_argument("--limit", type=int, default=0, help="first N images only")
    ap.add_argument("--batch", type=int, default=256, help="images per batch (default 256)")
    ap.add_argument("--seed", type=int, default=0, help="seed of --synthetic and of the latents "
                    "drawn (default 0)")
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                    help="arithmetic of the model (default float64)")
    ap.add_argument("--per-image", action="store_true", help="also print each image's bits/dim")
    ap.add_argument("--round-trip", type=int, default=0, metavar="N",
                    help="also draw N latents, decode and encode them again, and encode and "
                    "decode the first N images: print the largest differences")
    ap.add_argument("--temperature", type=float, default=0.7,
                    help="of --round-trip and --sample (default 0.7)")
    ap.add_argument("--sample", type=int, default=0, metavar="N",
                    help="write N drawn images to --out as uint8 (N, H, W, C) .npy")
    ap.add_argument("--out", help="the .npy file of --sample")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.limit < 0 or args.round_trip < 0 or args.sample < 0:
        ap.error("--batch must be positive; --limit, --round-trip and --sample not negative")
    if bool(args.sample) != bool(args.out):
        ap.error("--sample N and --out FILE go together")
    dtype = torch.float64 if args.dtype == "float64" else torch.float32

    try:
        ck = lc.Checkpoint(args.checkpoint)
        flow = Flow(ck).to(dtype)
    except (OSError, KeyError) as e:
        print(f"{PROG}: {args.checkpoint}: cannot read it as an HDF5 checkpoint ({e})",
              file=sys.stderr)
        return 1
    except ModelError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1

    if args.synthetic is not None:
        if args.synthetic < 1:
            ap.error("--synthetic needs a positive count")
        spec = f"synthetic {args.synthetic} (numpy seed {args.seed})"
        images = np.random.default_rng(args.seed).integers(
            0, 256, size=(args.synthetic,) + flow.shape, dtype=np.uint8)
    else:
        spec = args.data or str(ck.config.get("data", "fashion-mnist"))
        try:
            images = lc.load_images(spec, args.split)
        except lc.DataError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 1
    if images.shape[1:] != flow.shape:
        print(f"{PROG}: {spec} holds {'x'.join(map(str, images.shape[1:]))} images; the model "
              f"takes {'x'.join(map(str, flow.shape))}", file=sys.stderr)
        return 2
    if args.limit:
        images = images[:args.limit]
    if len(images) == 0:
        print(f"{PROG}: {spec} holds no images", file=sys.stderr)
        return 1

    result = {"checkpoint": args.checkpoint, "data": spec, "split": args.split,
              "images": int(len(images)), "step": ck.step, "dtype": args.dtype}
    generator = torch.Generator().manual_seed(args.seed)
    try:
        with torch.no_grad():
            bpd = torch.cat([flow.bpd(dequantize(images[i:i + args.batch], dtype))
                             for i in range(0, len(images), args.batch)]).double().numpy()
            result["bpd"] = float(bpd.mean())
            if args.round_trip:
                x, z = flow.sample(args.round_trip, args.temperature, generator)
                z_back, _ = flow.encode(x)
                x = dequantize(images[:args.round_trip], dtype)
                x_back, _ = flow.decode(flow.encode(x)[0])
                result["round_trip_images"] = args.round_trip
                result["round_trip_latent_max_diff"] = max(
                    float((a - b).abs().max()) for a, b in zip(z, z_back))
                result["round_trip_image_max_diff"] = float((x_back - x).abs().max())
            if args.sample:
                x, _ = flow.sample(args.sample, args.temperature, generator)
                np.save(args.out, quantize(x))
                result["samples"] = args.out
    except ModelError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    if args.per_image:
        result["per_image"] = [float(v) for v in bpd]
    if args.json:
        print(json.dumps(result))
        return 0
    if args.per_image:
        for i, v in enumerate(bpd):
            print(f"image {i}: {v:.6f}")
    if args.round_trip:
        print(f"round trip of {args.round_trip} drawn latents: largest |z - encode(decode(z))| "
              f"{result['round_trip_latent_max_diff']:.3g}; largest |x - decode(encode(x))| "
              f"{result['round_trip_image_max_diff']:.3g}")
    if args.sample:
        print(f"samples: {args.out} ({args.sample} images at temperature {args.temperature})")
    print(f"{args.split} bpd: {result['bpd']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
