#!/usr/bin/env python3
"""load_checkpoint.py: bits/dim of images under a cincflow checkpoint, with h5py and numpy alone.

    load_checkpoint.py CHECKPOINT [--data SPEC | --synthetic N] [--split test|train]
                       [--limit N] [--batch N] [--per-image] [--check-logdet] [--json]

Reads the HDF5 file written by `cincflow train` (no cincflow code, no torch), rebuilds the flow
from the architecture the file stores, runs its forward pass in float64 and prints the mean
bits/dim of the images, `test bpd: X` (or one JSON object). The images are dequantized at the
midpoint of their bins, x = k/256 - 0.5 + 1/512, as `cincflow eval --dequant midpoint` does, so
the two agree to the precision of cincflow's float32 arithmetic (about 1e-6 bits/dim on small
models). examples/torch_flow.py is the same flow in PyTorch, with its inverse and sampling.

Data (SPEC, as cincflow's --data; default: the `data` the checkpoint was trained on):
    idx:FILE              an idx3-ubyte image file, gzip-compressed or not (--split is ignored)
    fashion-mnist[:DIR]   {t10k,train}-images-idx3-ubyte.gz in DIR (default
                          /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist)
    cifar10:DIR           CIFAR-10 binary: test_batch.bin or data_batch_1..5.bin, in DIR or in
                          DIR/cifar-10-batches-bin
    png:DIR               the *.png files of DIR (8-bit gray, 8-bit RGB or palette), by name
    npy:FILE              a uint8 array (N, H, W) or (N, H, W, C) saved with numpy.save
--synthetic N draws N images of uniformly random pixels from numpy's generator (--seed); they are
not the images of cincflow's synthetic: spec.

The file (all names are dotted paths; io/cf_checkpoint.h has the whole layout):
    /arch attribute json  the architecture (format 2): {"input": [H, W, C], "kinds": {kind:
                          {provider, summary, conventions, hparams}}, "layers": [{"name",
                          "kind", "hparams", "in", "out"}, ...]} (models/cf_arch.h)
    /config attributes    the training settings; a format-1 file (no /arch) holds the built-in
                          model's: height, width, channels, levels (L), depth (K), hidden,
                          coupling ("quad" or "affine"), conv ("cinc", "1x1" or "emerging")
    /params/<name>        float32 tensors; convolution weights HWIO (kh, kw, c_in, c_out)
    /state/<name>         actnorm "initialized" flags; a 1x1 convolution's perm and sign
The tensors of layer N are /params/N.<suffix> and /state/N.<suffix>, suffixes as below. A kind
this program does not know (a plugin's) is an error naming the layer, the kind and its provider.
A format-1 file stands for the built-in list: for each level n = 0 .. L-1 a squeeze
(levels.<n>.squeeze), K steps levels.<n>.steps.<k>.{actnorm, conv, coupling} (conv: cinc_conv,
invconv1x1 or emerging_conv; coupling: quad_coupling or affine_coupling of width hidden), a
split levels.<n>.split but after the last level; then the prior "prior".

The flow is its list of layers applied in order to an image x (H, W, C), NHWC, in float64. Each
adds to log|det| or factors channels out under a Gaussian whose log-density is added; log p(x)
is the sum of both, and bits/dim = -(log p(x) - D log 256) / (D ln 2), D = H W C. The kinds
(hyperparameters in brackets), h, w, c the shape the layer receives:
    squeeze           (h, w, c) -> (h/2, w/2, 4c); channel c*4 + dy*2 + dx holds pixel
                      (2i + dy, 2j + dx) of channel c; log|det| = 0. No tensors.
    actnorm           y = (x + bias) * exp(logs) per channel; log|det| = h w sum(logs).
                      .bias, .logs (c); state .initialized
    invconv1x1        y = x W per pixel, W = P (L + I) (U + diag(sign exp(log_s))), L strictly
                      lower, U strictly upper, P[r][j] = [j == perm[r]]; log|det| = h w
                      sum(log_s). .lower, .upper (c, c), .log_s (c); state .perm, .sign (c)
    cinc_conv         the masked 3x3 convolution with mask cinc (below). .weight, .bias
    masked_conv       [mask: cinc | emerging_causal | emerging_anticausal, default cinc] the
                      masked 3x3 convolution with that mask. .weight (3, 3, c, c), .bias (c)
    emerging_conv     invconv1x1 <name>.1x1, then masked_conv <name>.causal (emerging_causal),
                      then masked_conv <name>.anticausal (emerging_anticausal)
    affine_coupling   [hidden: network width, default 128] x = [xa, xb], xa the first c/2
                      channels (rounded down); y = [xa, (xb + t) s] with (t, s) from nets.0(xa)
    quad_coupling     [hidden] x = [x1, x2, x3, x4], c/4 channels each; y1 = x1,
                      y2 = (x2 + t) s from nets.0(x1), y3 from nets.1([x1, x2]), y4 from
                      nets.2([x1, x2, x3]) (the inputs, not the outputs)
                      Both: log|det| = sum of log s over every transformed element.
                      .nets.<m>.{conv1.weight, actnorm1.{bias,logs}, conv2.weight,
                      actnorm2.{bias,logs}, out.{weight,bias,logs}}; state
                      .nets.<m>.actnorm{1,2}.initialized
    split             x = [x1, z], x1 the first c/2 channels (rounded down);
                      [mean, logs] = zero_conv(x1) (mean: the first c - c/2 output channels,
                      logs the rest); log N(z; mean, exp(logs)) is added, x1 goes on.
                      .prior.{weight,bias,logs}
    prior             log N(x; mean, exp(logs)) is added, mean and logs (1, h, w, c); x goes on
                      unchanged (a flow without a prior has log p = log|det| alone).
                      .mean, .logs

Masked 3x3 convolutions: y = conv(x, W * M) + bias, M a fixed mask on W[kh][kw][c][o]:
    cinc                 input padded by 2 on the top and left only; all nine taps; the
                         current-pixel tap W[2][2] keeps c >= o
    emerging_causal      padded by 1 on every side; taps (0..1, 0..1); W[1][1] keeps c >= o
    emerging_anticausal  padded by 1 on every side; taps (1..2, 1..2); W[1][1] keeps c <= o
The Jacobian is triangular in (raster order, channel) with the current tap's diagonal, so
log|det| = h w log|det(W_centre * M_centre)|.

Coupling networks: NN(u) = zero_conv(relu(actnorm2(conv1x1(relu(actnorm1(conv3x3(u)))))))
(conv1.weight 3x3 and conv2.weight 1x1, without bias, "same" padding), and
zero_conv(u) = (conv3x3(u, out.weight) + out.bias) * exp(3 out.logs). A network's output h gives
shifts t = h[..., 0::2] and scales s = sigmoid(h[..., 1::2] + 2).

Gaussians: log N(z; m, exp(ls)) = sum -0.5 log(2 pi) - ls - 0.5 ((z - m) exp(-ls))^2.

An actnorm whose "initialized" flag is 0 (a checkpoint saved before any training step) takes
bias = -mean, logs = -log(std + 1e-6) per channel from the first batch it sees, as cincflow does.

Not here: the inverse (sampling, encoding for other uses: examples/torch_flow.py), training,
uniform dequantization noise, cincflow's synthetic: images, speed (plain numpy, one batch at a
time).
"""
import argparse
import gzip
import json
import math
import os
import struct
import sys
import zlib

import numpy as np

try:
    import h5py
except ImportError:
    sys.exit("load_checkpoint.py: needs h5py (Debian: apt-get install python3-h5py)")

PROG = "load_checkpoint.py"
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
UNINITIALIZED = []  # actnorms initialised from data here, in order


class ModelError(Exception):
    """The checkpoint does not describe a model this program can evaluate."""


# ---- the checkpoint ------------------------------------------------------------------------------


def attr_value(v):
    """An HDF5 attribute as a Python int, float or str."""
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v[()]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


class Checkpoint:
    """Parameters and state of a checkpoint as float64 arrays, with a record of which were read."""

    def __init__(self, path):
        self.path = path
        with h5py.File(path, "r") as f:
            fmt = attr_value(f.attrs.get("format", ""))
            if fmt != "cincflow-checkpoint":
                raise ModelError(f"{path}: not a cincflow checkpoint (format attribute '{fmt}')")
            self.format_version = attr_value(f.attrs.get("format_version", 0))
            if self.format_version not in (1, 2):
                raise ModelError(f"{path}: format version {self.format_version}, expected 1 or 2")
            self.step = attr_value(f.attrs.get("step", 0))
            if "config" not in f:
                raise ModelError(f"{path}: no /config group")
            self.config = {k: attr_value(v) for k, v in f["config"].attrs.items() if k != "json"}
            # The architecture (format 2); None: rebuild the built-in model from /config.
            self.arch_json = (attr_value(f["arch"].attrs["json"])
                              if "arch" in f and "json" in f["arch"].attrs else None)
            self.params = {k: np.asarray(v[()], dtype=np.float64) for k, v in f["params"].items()}
            self.state = ({k: np.asarray(v[()], dtype=np.float64) for k, v in f["state"].items()}
                          if "state" in f else {})
        self.used = set()

    def _get(self, table, group, name, shape):
        if name not in table:
            raise ModelError(f"{self.path}: /{group}/{name} is missing")
        a = table[name]
        if shape is not None and a.shape != tuple(shape):
            raise ModelError(f"{self.path}: /{group}/{name} has shape {a.shape}, expected "
                             f"{tuple(shape)}")
        if not np.all(np.isfinite(a)):
            raise ModelError(f"{self.path}: /{group}/{name} holds non-finite values")
        self.used.add((group, name))
        return a.copy()

    def param(self, name, shape=None):
        return self._get(self.params, "params", name, shape)

    def buffer(self, name, shape=None):
        return self._get(self.state, "state", name, shape)

    def unused(self):
        names = [("params", k) for k in self.params] + [("state", k) for k in self.state]
        return sorted(f"/{g}/{k}" for g, k in names if (g, k) not in self.used)

    def config_int(self, key):
        if key not in self.config:
            raise ModelError(f"{self.path}: /config has no attribute '{key}'")
        return int(self.config[key])

    def config_str(self, key):
        if key not in self.config:
            raise ModelError(f"{self.path}: /config has no attribute '{key}'")
        return str(self.config[key])


# ---- the math ------------------------------------------------------------------------------------


def conv2d(x, w, pad):
    """y[b, i, j, o] = sum over kh, kw, c of xp[b, i + kh, j + kw, c] w[kh, kw, c, o], where xp is
    x (B, H, W, C) zero-padded by pad = (top, left, bottom, right); w is HWIO."""
    top, left, bottom, right = pad
    kh, kw, _, cout = w.shape
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    y = np.zeros((x.shape[0], ho, wo, cout))
    for a in range(kh):
        for b in range(kw):
            y += xp[:, a:a + ho, b:b + wo, :] @ w[a, b]
    return y


def conv_same(x, w):
    p = (w.shape[0] - 1) // 2
    return conv2d(x, w, (p, p, p, p))


def log_sigmoid(v):
    return -np.logaddexp(0.0, -v)


def gaussian_logp(z, mean, logs):
    """Per image: sum of log N(z; mean, exp(logs)) over every axis but the first."""
    e = (z - mean) * np.exp(-logs)
    terms = -HALF_LOG_2PI - logs - 0.5 * e * e
    return terms.reshape(z.shape[0], -1).sum(axis=1)


def actnorm_init(x, what):
    """Data-dependent initialisation from x: bias = -mean, logs = -log(std + 1e-6) per channel."""
    c = x.shape[-1]
    v = x.reshape(-1, c)
    mean = v.mean(axis=0)
    std = np.sqrt(((v - mean) ** 2).mean(axis=0))
    if not UNINITIALIZED:
        print(f"{PROG}: {what} (and maybe other actnorms) was never initialized: each takes "
              "its initialisation from the first batch it sees, so the result depends on --batch",
              file=sys.stderr)
    UNINITIALIZED.append(what)
    return -mean, -np.log(std + 1e-6)


class ActnormParams:
    def __init__(self, ck, name, c):
        self.name = name
        self.bias = ck.param(name + ".bias", (c,))
        self.logs = ck.param(name + ".logs", (c,))
        self.initialized = ck.buffer(name + ".initialized", ()) != 0.0

    def apply(self, x):
        if not self.initialized:
            self.bias, self.logs = actnorm_init(x, self.name)
            self.initialized = True
        return (x + self.bias) * np.exp(self.logs)


class ZeroConv:
    """Glow's conv2d_zeros: (conv3x3_same(x, weight) + bias) * exp(3 logs)."""

    def __init__(self, ck, name, cin, cout):
        self.weight = ck.param(name + ".weight", (3, 3, cin, cout))
        self.bias = ck.param(name + ".bias", (cout,))
        self.logs = ck.param(name + ".logs", (cout,))

    def __call__(self, x):
        return (conv_same(x, self.weight) + self.bias) * np.exp(3.0 * self.logs)


# ---- the architecture ----------------------------------------------------------------------------

BUILTIN_CONV = {"cinc": "cinc_conv", "1x1": "invconv1x1", "emerging": "emerging_conv"}
BUILTIN_COUPLING = {"quad": "quad_coupling", "affine": "affine_coupling"}
HPARAM_DEFAULTS = {"quad_coupling": {"hidden": 128}, "affine_coupling": {"hidden": 128},
                   "masked_conv": {"mask": "cinc"}}


def builtin_layers(ck):
    """The built-in multi-scale model of a format-1 file's /config, as cincflow lists it."""
    model = ck.config.get("model", "glow-multiscale")
    if model != "glow-multiscale":
        raise ModelError(f"{ck.path}: model '{model}' (only glow-multiscale is known)")
    levels, depth = ck.config_int("levels"), ck.config_int("depth")
    hidden = ck.config_int("hidden")
    conv, coupling = ck.config_str("conv"), ck.config_str("coupling")
    if conv not in BUILTIN_CONV:
        raise ModelError(f"{ck.path}: unknown conv '{conv}'")
    if coupling not in BUILTIN_COUPLING:
        raise ModelError(f"{ck.path}: unknown coupling '{coupling}'")
    layers = []

    def add(name, kind, hparams=None):
        layers.append({"name": name, "kind": kind, "hparams": hparams or {}})
    for i in range(levels):
        add(f"levels.{i}.squeeze", "squeeze")
        for j in range(depth):
            p = f"levels.{i}.steps.{j}"
            add(p + ".actnorm", "actnorm")
            add(p + ".conv", BUILTIN_CONV[conv])
            add(p + ".coupling", BUILTIN_COUPLING[coupling], {"hidden": hidden})
        if i < levels - 1:
            add(f"levels.{i}.split", "split")
    add("prior", "prior")
    return layers


def architecture(ck):
    """(input shape (H, W, C), layers [{name, kind, hparams, provider, in?, out?}]) from /arch,
    or from /config for a format-1 file."""
    if ck.arch_json is None:
        shape = (ck.config_int("height"), ck.config_int("width"), ck.config_int("channels"))
        return shape, builtin_layers(ck)
    try:
        arch = json.loads(ck.arch_json)
    except ValueError as e:
        raise ModelError(f"{ck.path}: /arch json is not valid JSON ({e})") from None
    if not isinstance(arch, dict) or arch.get("format") != "cincflow-architecture":
        raise ModelError(f"{ck.path}: /arch json is not a cincflow architecture")
    if arch.get("version") != 1:
        raise ModelError(f"{ck.path}: architecture version {arch.get('version')}, expected 1")
    shape = arch.get("input")
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(v, int) and v > 0 for v in shape)):
        raise ModelError(f"{ck.path}: /arch input {shape!r} is not three positive integers")
    kinds = arch.get("kinds") or {}
    layers = []
    for i, layer in enumerate(arch.get("layers") or []):
        if not isinstance(layer, dict) or not isinstance(layer.get("name"), str) \
                or not isinstance(layer.get("kind"), str):
            raise ModelError(f"{ck.path}: /arch layer {i} has no name or kind")
        spec = {"name": layer["name"], "kind": layer["kind"],
                "hparams": dict(layer.get("hparams") or {}),
                "provider": (kinds.get(layer["kind"]) or {}).get("provider", "")}
        for key in ("in", "out"):
            if key in layer:
                spec[key] = tuple(layer[key])
        layers.append(spec)
    return tuple(shape), layers


def hparam(spec, key):
    """A layer's hyperparameter, or its kind's default when the file leaves it out."""
    hp = spec["hparams"]
    return hp[key] if key in hp else HPARAM_DEFAULTS[spec["kind"]][key]


def unknown_kind(spec):
    provider = spec.get("provider") or "no provider"
    return ModelError(f"layer '{spec['name']}' has kind '{spec['kind']}' (provider: "
                      f"{provider}), which {PROG} does not implement; it knows "
                      + ", ".join(KINDS))


# ---- layers: each maps (x, log-det per image, log-density per image) forward ---------------------


class Squeeze:
    linear = False

    def __init__(self, ck, name, shape):
        h, w, c = shape
        if h % 2 or w % 2:
            raise ModelError(f"{name}: cannot squeeze {h}x{w} images")
        self.out_shape = (h // 2, w // 2, 4 * c)

    def forward(self, x, logdet, logp):
        b, h, w, c = x.shape
        y = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
        return y.reshape(b, h // 2, w // 2, 4 * c), logdet, logp


class Actnorm:
    linear = False

    def __init__(self, ck, name, shape):
        self.shape = self.out_shape = shape
        self.an = ActnormParams(ck, name, shape[2])

    def forward(self, x, logdet, logp):
        y = self.an.apply(x)
        return y, logdet + self.shape[0] * self.shape[1] * self.an.logs.sum(), logp


# Padding (top, left, bottom, right) of each mask kind.
MASK_PADDING = {"cinc": (2, 2, 0, 0), "emerging_causal": (1, 1, 1, 1),
                "emerging_anticausal": (1, 1, 1, 1)}


def conv_mask(kind, c):
    """The fixed mask of a masked 3x3 convolution, HWIO, and its current-pixel tap."""
    m = np.zeros((3, 3, c, c))
    lower = np.tril(np.ones((c, c)))  # [c][o] kept for c >= o
    if kind == "cinc":
        m[:, :] = 1.0
        m[2, 2] = lower
        return m, 2
    if kind == "emerging_causal":
        m[0:2, 0:2] = 1.0
        m[1, 1] = lower
        return m, 1
    if kind == "emerging_anticausal":
        m[1:3, 1:3] = 1.0
        m[1, 1] = lower.T  # kept for c <= o
        return m, 1
    raise ModelError(f"unknown mask '{kind}' (cinc, emerging_causal or emerging_anticausal)")


class MaskedConv:
    linear = True

    def __init__(self, ck, name, shape, mask):
        self.name, self.shape, self.out_shape = name, shape, shape
        c = shape[2]
        try:
            m, centre = conv_mask(mask, c)
        except ModelError as e:
            raise ModelError(f"{name}: {e}") from None
        self.weight = ck.param(name + ".weight", (3, 3, c, c)) * m
        self.bias = ck.param(name + ".bias", (c,))
        self.pad = MASK_PADDING[mask]
        sign, logabs = np.linalg.slogdet(self.weight[centre, centre])
        if sign == 0 or not np.isfinite(logabs):
            raise ModelError(f"{name}: the current-pixel tap is singular")
        self.logdet = shape[0] * shape[1] * logabs

    def apply_linear(self, x):
        return conv2d(x, self.weight, self.pad)

    def forward(self, x, logdet, logp):
        return self.apply_linear(x) + self.bias, logdet + self.logdet, logp


class Invconv1x1:
    linear = True

    def __init__(self, ck, name, shape):
        self.name, self.shape, self.out_shape = name, shape, shape
        c = shape[2]
        lower = np.tril(ck.param(name + ".lower", (c, c)), -1)
        upper = np.triu(ck.param(name + ".upper", (c, c)), 1)
        log_s = ck.param(name + ".log_s", (c,))
        perm = ck.buffer(name + ".perm", (c,)).astype(np.int64)
        sign = ck.buffer(name + ".sign", (c,))
        if sorted(perm.tolist()) != list(range(c)):
            raise ModelError(f"{name}.perm is not a permutation of 0..{c - 1}")
        p = np.eye(c)[perm]  # P[r][j] = 1 iff j == perm[r]
        self.matrix = p @ (lower + np.eye(c)) @ (upper + np.diag(sign * np.exp(log_s)))
        self.logdet = shape[0] * shape[1] * log_s.sum()

    def apply_linear(self, x):
        return x @ self.matrix

    def forward(self, x, logdet, logp):
        return self.apply_linear(x), logdet + self.logdet, logp


class CouplingNet:
    def __init__(self, ck, name, cin, cout, hidden):
        self.w1 = ck.param(name + ".conv1.weight", (3, 3, cin, hidden))
        self.an1 = ActnormParams(ck, name + ".actnorm1", hidden)
        self.w2 = ck.param(name + ".conv2.weight", (1, 1, hidden, hidden))
        self.an2 = ActnormParams(ck, name + ".actnorm2", hidden)
        self.out = ZeroConv(ck, name + ".out", hidden, cout)

    def __call__(self, u):
        h = np.maximum(self.an1.apply(conv_same(u, self.w1)), 0.0)
        h = np.maximum(self.an2.apply(conv_same(h, self.w2)), 0.0)
        return self.out(h)


def coupling_edges(name, kind, c):
    """Channel block edges of a coupling: quad [0, c/4, c/2, 3c/4, c], affine [0, c/2, c]."""
    if kind == "quad":
        if c < 4 or c % 4:
            raise ModelError(f"{name}: quad coupling on {c} channels (a multiple of 4 needed)")
        q = c // 4
        return [0, q, 2 * q, 3 * q, c]
    if c < 2:
        raise ModelError(f"{name}: affine coupling on {c} channel")
    return [0, c // 2, c]


class Coupling:
    linear = False

    def __init__(self, ck, name, shape, kind, hidden):
        self.shape = self.out_shape = shape
        self.edges = e = coupling_edges(name, kind, shape[2])
        self.nets = [CouplingNet(ck, f"{name}.nets.{k}", e[k + 1], 2 * (e[k + 2] - e[k + 1]),
                                 hidden) for k in range(len(e) - 2)]

    def forward(self, x, logdet, logp):
        e = self.edges
        y = x.copy()
        for k, net in enumerate(self.nets):
            h = net(x[..., :e[k + 1]])  # conditioned on the input blocks before block k + 1
            t, l = h[..., 0::2], h[..., 1::2] + 2.0
            y[..., e[k + 1]:e[k + 2]] = (x[..., e[k + 1]:e[k + 2]] + t) / (1.0 + np.exp(-l))
            logdet = logdet + log_sigmoid(l).reshape(x.shape[0], -1).sum(axis=1)
        return y, logdet, logp


class Split:
    linear = False

    def __init__(self, ck, name, shape):
        h, w, c = shape
        if c < 2:
            raise ModelError(f"{name}: cannot split images of {c} channel")
        self.kept, self.out = c // 2, c - c // 2
        self.out_shape = (h, w, self.kept)
        self.prior = ZeroConv(ck, name + ".prior", self.kept, 2 * self.out)

    def forward(self, x, logdet, logp):
        x1, z = x[..., :self.kept], x[..., self.kept:]
        h = self.prior(x1)
        return x1, logdet, logp + gaussian_logp(z, h[..., :self.out], h[..., self.out:])


class Prior:
    linear = False

    def __init__(self, ck, name, shape):
        self.out_shape = shape
        self.mean = ck.param(name + ".mean", (1,) + tuple(shape))
        self.logs = ck.param(name + ".logs", (1,) + tuple(shape))

    def forward(self, x, logdet, logp):
        return x, logdet, logp + gaussian_logp(x, self.mean, self.logs)


# Each kind: (checkpoint, layer spec, shape) -> the layers that compute it, in order.
KINDS = {
    "squeeze": lambda ck, s, shape: [Squeeze(ck, s["name"], shape)],
    "actnorm": lambda ck, s, shape: [Actnorm(ck, s["name"], shape)],
    "cinc_conv": lambda ck, s, shape: [MaskedConv(ck, s["name"], shape, "cinc")],
    "masked_conv": lambda ck, s, shape: [MaskedConv(ck, s["name"], shape, hparam(s, "mask"))],
    "invconv1x1": lambda ck, s, shape: [Invconv1x1(ck, s["name"], shape)],
    "emerging_conv": lambda ck, s, shape: [
        Invconv1x1(ck, s["name"] + ".1x1", shape),
        MaskedConv(ck, s["name"] + ".causal", shape, "emerging_causal"),
        MaskedConv(ck, s["name"] + ".anticausal", shape, "emerging_anticausal")],
    "affine_coupling": lambda ck, s, shape: [
        Coupling(ck, s["name"], shape, "affine", int(hparam(s, "hidden")))],
    "quad_coupling": lambda ck, s, shape: [
        Coupling(ck, s["name"], shape, "quad", int(hparam(s, "hidden")))],
    "split": lambda ck, s, shape: [Split(ck, s["name"], shape)],
    "prior": lambda ck, s, shape: [Prior(ck, s["name"], shape)],
}


class Model:
    def __init__(self, ck):
        self.shape, self.specs = architecture(ck)
        self.layers = []
        shape = self.shape
        for spec in self.specs:
            if spec["kind"] not in KINDS:
                raise unknown_kind(spec)
            if "in" in spec and spec["in"] != shape:
                raise ModelError(f"{ck.path}: layer '{spec['name']}' is said to take {spec['in']}"
                                 f" but receives {shape}")
            for layer in KINDS[spec["kind"]](ck, spec, shape):
                self.layers.append(layer)
                shape = layer.out_shape
            if "out" in spec and spec["out"] != shape:
                raise ModelError(f"{ck.path}: layer '{spec['name']}' is said to give "
                                 f"{spec['out']} but gives {shape}")
        extra = ck.unused()
        if extra:
            raise ModelError(f"{ck.path}: tensors this model does not use: {', '.join(extra[:5])}"
                             + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""))

    def log_prob(self, x):
        """log p(x) per image for dequantized images x (B, H, W, C)."""
        logdet = np.zeros(x.shape[0])
        logp = np.zeros(x.shape[0])
        for layer in self.layers:
            x, logdet, logp = layer.forward(x, logdet, logp)
        return logp + logdet

    def bpd(self, x):
        d = float(np.prod(self.shape))
        return -(self.log_prob(x) - d * math.log(256.0)) / (d * math.log(2.0))

def check_logdets(model, limit):
    """Compares each invertible convolution's closed-form log|det| with the log|det| of its whole
    Jacobian, built column by column; layers of more than `limit` dimensions are skipped.
    Returns (largest relative difference, layers checked)."""
    worst, checked = 0.0, 0
    for layer in model.layers:
        if not layer.linear:
            continue
        h, w, c = layer.shape
        n = h * w * c
        if n > limit:
            continue
        basis = np.eye(n).reshape(n, h, w, c)
        jac = layer.apply_linear(basis).reshape(n, n)
        sign, logabs = np.linalg.slogdet(jac)
        if sign == 0:
            raise ModelError(f"{layer.name}: its Jacobian is singular")
        worst = max(worst, abs(logabs - layer.logdet) / max(1.0, abs(logabs)))
        checked += 1
    return worst, checked


# ---- data ----------------------------------------------------------------------------------------


class DataError(Exception):
    """A data file that is missing or not what its spec says."""


def read_file(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DataError(f"{path}: {e.strerror}") from None


def read_idx_images(path):
    raw = read_file(path)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: bad gzip stream ({e})") from None
    if len(raw) < 16 or raw[:4] != b"\x00\x00\x08\x03":
        raise DataError(f"{path}: not an idx3-ubyte image file (magic {raw[:4].hex(' ')})")
    n, h, w = struct.unpack(">III", raw[4:16])
    if len(raw) != 16 + n * h * w:
        raise DataError(f"{path}: {len(raw) - 16} bytes of pixels, the header says {n * h * w}")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w, 1)


def read_cifar10(root, test):
    names = ["test_batch.bin"] if test else [f"data_batch_{i}.bin" for i in range(1, 6)]
    inner = os.path.join(root, "cifar-10-batches-bin")
    if not os.path.exists(os.path.join(root, names[0])) and os.path.isdir(inner):
        root = inner
    parts = []
    for name in names:
        path = os.path.join(root, name)
        raw = read_file(path)
        if len(raw) == 0 or len(raw) % 3073:
            raise DataError(f"{path}: {len(raw)} bytes, not a whole number of 3073-byte records")
        rec = np.frombuffer(raw, np.uint8).reshape(-1, 3073)
        parts.append(rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(parts)


def unfilter_png_rows(data, rows, rowbytes, bpp, path):
    """Undoes PNG's per-row filters (None, Sub, Up, Average, Paeth) of `rows` rows."""
    if len(data) < rows * (rowbytes + 1):
        raise DataError(f"{path}: the image data is truncated")
    out = np.zeros((rows, rowbytes), np.uint8)
    prev = np.zeros(rowbytes, np.int64)
    pos = 0
    for r in range(rows):
        ftype = data[pos]
        line = np.frombuffer(data, np.uint8, rowbytes, pos + 1).astype(np.int64)
        pos += rowbytes + 1
        if ftype == 0:
            cur = line
        elif ftype == 1:
            cur = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1) & 255
        elif ftype == 2:
            cur = (line + prev) & 255
        elif ftype in (3, 4):
            cur = line.copy()
            for i in range(rowbytes):
                a = cur[i - bpp] if i >= bpp else 0
                b = prev[i]
                if ftype == 3:
                    pred = (a + b) >> 1
                else:
                    c = prev[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[i] = (cur[i] + pred) & 255
        else:
            raise DataError(f"{path}: unknown PNG filter type {ftype}")
        out[r] = cur
        prev = cur
    return out, pos


def unpack_bits(rows, width, depth):
    """Rows of 1, 2 or 4-bit samples as one byte per sample."""
    if depth == 8:
        return rows[:, :width]
    shifts = np.arange(8 - depth, -1, -depth)
    samples = (rows[:, :, None] >> shifts) & ((1 << depth) - 1)
    return samples.reshape(rows.shape[0], -1)[:, :width].astype(np.uint8)


def read_png(path):
    """An 8-bit gray, 8-bit RGB or palette PNG as (H, W, C) uint8 (palette images as RGB)."""
    raw = read_file(path)
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        raise DataError(f"{path}: not a PNG file")
    pos, idat, palette, header = 8, [], None, None
    while pos + 8 <= len(raw):
        length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"PLTE":
            palette = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise DataError(f"{path}: no IHDR chunk")
    width, height, depth, color, _, _, interlace = header
    if color == 3:
        if palette is None:
            raise DataError(f"{path}: a palette image without a palette")
        samples = 1
    elif color in (0, 2):
        if depth != 8:
            raise DataError(f"{path}: {depth}-bit samples (only 8-bit images are supported)")
        samples = 1 if color == 0 else 3
    else:
        raise DataError(f"{path}: has an alpha channel (only gray or RGB images are supported)")
    try:
        data = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise DataError(f"{path}: bad image data ({e})") from None
    bpp = max(1, samples * depth // 8)
    img = np.zeros((height, width), np.uint8) if samples == 1 else np.zeros(
        (height, width, 3), np.uint8)
    # Adam7 passes (x0, y0, dx, dy), or the whole image.
    passes = ([(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
               (1, 0, 2, 2), (0, 1, 1, 2)] if interlace else [(0, 0, 1, 1)])
    offset = 0
    for x0, y0, dx, dy in passes:
        pw, ph = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if pw <= 0 or ph <= 0:
            continue
        rowbytes = (pw * samples * depth + 7) // 8
        rows, used = unfilter_png_rows(data[offset:], ph, rowbytes, bpp, path)
        offset += used
        if samples == 1:
            img[y0::dy, x0::dx] = unpack_bits(rows, pw, depth)
        else:
            img[y0::dy, x0::dx] = rows.reshape(ph, pw, 3)
    if color == 3:
        if img.max() >= len(palette):
            raise DataError(f"{path}: a palette index beyond the palette")
        return palette[img]
    return img if samples == 3 else img[:, :, None]


def read_png_dir(root):
    try:
        names = sorted(n for n in os.listdir(root)
                       if n.lower().endswith(".png") and not n.startswith("."))
    except OSError as e:
        raise DataError(f"{root}: {e.strerror}") from None
    if not names:
        raise DataError(f"{root}: no .png files")
    images = [read_png(os.path.join(root, n)) for n in names]
    for n, im in zip(names, images):
        if im.shape != images[0].shape:
            raise DataError(f"{os.path.join(root, n)}: {im.shape}, expected {images[0].shape}")
    return np.stack(images)


def read_npy(path):
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: {e}") from None
    if a.dtype != np.uint8 or a.ndim not in (3, 4):
        raise DataError(f"{path}: {a.dtype} {a.shape}, expected uint8 (N, H, W) or (N, H, W, C)")
    return a if a.ndim == 4 else a[..., None]


def load_images(spec, split):
    """8-bit images (N, H, W, C) named by a data spec."""
    kind, _, arg = spec.partition(":")
    test = split == "test"
    if kind == "idx" and arg:
        return read_idx_images(arg)
    if kind == "fashion-mnist":
        prefix = "t10k" if test else "train"
        return read_idx_images(os.path.join(arg or FASHION_MNIST_DIR,
                                            f"{prefix}-images-idx3-ubyte.gz"))
    if kind == "cifar10" and arg:
        return read_cifar10(arg, test)
    if kind == "png" and arg:
        return read_png_dir(arg)
    if kind == "npy" and arg:
        return read_npy(arg)
    raise DataError(f"data '{spec}': expected idx:FILE, fashion-mnist[:DIR], cifar10:DIR, "
                    "png:DIR or npy:FILE")


def dequantize(k):
    """The midpoint of each pixel's bin: x = k/256 - 0.5 + 1/512."""
    return (k.astype(np.float64) + 0.5) / 256.0 - 0.5


# ---- the command ---------------------------------------------------------------------------------


def main(argv):
    ap = argparse.ArgumentParser(prog=PROG, description="Bits/dim of images under a cincflow "
                                 "checkpoint, computed in numpy from the HDF5 file alone.")
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
    ap.add_argument("--seed", type=int, default=0, help="seed of --synthetic (default 0)")
    ap.add_argument("--per-image", action="store_true", help="also print each image's bits/dim")
    ap.add_argument("--check-logdet", action="store_true",
                    help="also compare each invertible convolution's log|det| with that of its "
                    "whole Jacobian (layers of at most 4096 dimensions)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.limit < 0:
        ap.error("--batch must be positive and --limit not negative")

    try:
        ck = Checkpoint(args.checkpoint)
        model = Model(ck)
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
            0, 256, size=(args.synthetic,) + model.shape, dtype=np.uint8)
    else:
        spec = args.data or str(ck.config.get("data", "fashion-mnist"))
        try:
            images = load_images(spec, args.split)
        except DataError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 1
    if images.shape[1:] != model.shape:
        print(f"{PROG}: {spec} holds {'x'.join(map(str, images.shape[1:]))} images; the model "
              f"takes {'x'.join(map(str, model.shape))}", file=sys.stderr)
        return 2
    if args.limit:
        images = images[:args.limit]
    if len(images) == 0:
        print(f"{PROG}: {spec} holds no images", file=sys.stderr)
        return 1

    bpd = np.concatenate([model.bpd(dequantize(images[i:i + args.batch]))
                          for i in range(0, len(images), args.batch)])
    result = {"checkpoint": args.checkpoint, "data": spec, "split": args.split,
              "images": int(len(images)), "step": ck.step, "bpd": float(bpd.mean())}
    if args.check_logdet:
        worst, checked = check_logdets(model, 4096)
        result["logdet_layers_checked"] = checked
        result["logdet_max_rel_diff"] = worst
    if args.per_image:
        result["per_image"] = [float(v) for v in bpd]
    if args.json:
        print(json.dumps(result))
        return 0
    if args.per_image:
        for i, v in enumerate(bpd):
            print(f"image {i}: {v:.6f}")
    if args.check_logdet:
        print(f"log|det| of {checked} invertible convolutions against their Jacobians: largest "
              f"relative difference {worst:.3g}")
    print(f"{args.split} bpd: {result['bpd']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
