"""Infinite-width kernels of convolutional networks: CNN-GP (NNGP) and CNTK.

Layers (value objects, validated on construction):

* :class:`Conv` ``(filter=3, padding="same", w_std=1.0, b_std=0.0)``: stride 1, ``filter x
  filter`` patches, NTK parameterization with fan-in ``filter^2 C``, one bias per channel;
* :class:`AvgPool` ``(window)``: non-overlapping average pooling (trailing rows/columns that do
  not fill a window are dropped, as ``"VALID"`` pooling);
* :class:`Flatten` (the "vanilla" readout: the next Dense layer sees every position, so the
  kernel is the mean over positions of the spatial diagonal) or :class:`GlobalAvgPool`
  (the mean over all pairs of positions);
* after the readout, fully-connected layers: Dense ``(w_std, b_std)`` and activations.

Activations may follow any Conv, AvgPool or Dense layer: the closed-form duals of
:mod:`infntk.activations` run the compiled engines of :mod:`infntk._backends.conv`; activations
without one (tanh, sigmoid, softplus, silu, elu, callables) run their Hermite series
(:mod:`infntk._backends.conv_series`) with a certified error bound
(:func:`conv_kernels_bounded`, ``Kernels.error_bound`` of :class:`infntk.Network`).
:func:`conv_kernels` evaluates the layer list on images of shape ``(n, H, W, C)`` (channels
last) and returns the NNGP and NTK Gram matrices.

Conventions are those of neural-tangents' ``stax`` (``Conv(out_chan, (q, q), padding=...)``,
``AvgPool``, ``Flatten``, ``GlobalAvgPool``, ``Dense``), see docs/conv.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._backends import conv as _ce
from ._backends import conv_series as _cs
from ._backends.series import check_continuous
from ._gram import check_memory, compiled_view, mirror_lower_to_upper
from ._numba_config import chunk_count, engine_lock, run_chunks
from ._validation import (check_parameterization, check_positive_int, check_real_dtype,
                          check_std, check_tol)
from .activations import FAMILY_ABRELU
from .layers import Activation, Dense, compose_activations

__all__ = ["Conv", "AvgPool", "Flatten", "GlobalAvgPool", "conv_kernels", "conv_kernels_bounded",
           "conv_diag", "needs_width", "kernel_regime", "check_image_pair"]

PADDINGS = ("same", "valid", "circular")
_PAD_CODE = {"same": 0, "valid": 1, "circular": 2}
# pairs computed together by the plane engine (the innermost index): as many as keep one
# padded plane of the batch within ~128 KiB (L2), 8 to 32 (measured: 8x8 images 1.5x faster
# with 32 than with 8, 28x28 1.1x with 16)
_PLANE_ENTRIES = 16384


# ----------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class Conv:
    """A stride-1 2-D convolution (fan-in ``filter^2 C``), NTK or standard parameterization.

    Parameters
    ----------
    filter : int
        Patch side ``q >= 1``.
    padding : {"same", "valid", "circular"}
        ``"same"``: zero padding, ``(q - 1) // 2`` before and the rest after (output size =
        input size); ``"valid"``: no padding (size shrinks by ``q - 1``); ``"circular"``:
        periodic (wrap-around) padding with the offsets of ``"same"``.
    w_std, b_std : float
        Weight and bias standard deviations (``b_std=None``: no bias parameters, the same
        kernels as 0 except for the standard parameterization's NTK).
    parameterization : {"ntk", "standard"}
        As neural-tangents' ``stax.Conv``: ``"standard"`` puts ``w_std / sqrt(filter^2 C)`` in
        the initialization, and the NTK gains ``filter^2 C`` times the layer's input kernel
        (averaged over the patch) instead of ``w_std^2`` times it, plus 1 with biases; ``C``
        is the input's channels for the first Conv and the hidden width (``width=`` of
        :func:`conv_kernels`) after it (docs/conv.md, docs/conventions.md).

    Examples
    --------
    >>> Conv(3, "circular", w_std=1.5, b_std=0.1)
    Conv(filter=3, padding='circular', w_std=1.5, b_std=0.1, parameterization='ntk')
    """

    filter: int = 3
    padding: str = "same"
    w_std: float = 1.0
    b_std: float | None = 0.0
    parameterization: str = "ntk"

    def __post_init__(self):
        object.__setattr__(self, "filter", check_positive_int(self.filter, "filter"))
        if not isinstance(self.padding, str) or self.padding.lower() not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}.")
        object.__setattr__(self, "padding", self.padding.lower())
        object.__setattr__(self, "w_std", check_std(self.w_std, "w_std"))
        object.__setattr__(self, "b_std", check_std(self.b_std, "b_std", allow_none=True))
        check_parameterization(self.parameterization, "Conv: parameterization")


@dataclass(frozen=True)
class AvgPool:
    """Non-overlapping ``window x window`` average pooling (stride = window, no padding).

    >>> AvgPool(2)
    AvgPool(window=2)
    """

    window: int = 2

    def __post_init__(self):
        object.__setattr__(self, "window", check_positive_int(self.window, "window"))


@dataclass(frozen=True)
class Flatten:
    """Readout over every position (the "vanilla" CNN/CNTK): kernel = mean of the diagonal.

    >>> Flatten()
    Flatten()
    """


@dataclass(frozen=True)
class GlobalAvgPool:
    """Readout by global average pooling: kernel = mean over all pairs of positions.

    >>> GlobalAvgPool()
    GlobalAvgPool()
    """


def _family(activation):
    """(family code, p0, p1) of the compiled closed-form dual of an activation (one place)."""
    dp = activation.family
    if dp is None:
        raise NotImplementedError(
            f"activation {activation.name!r} has no closed-form dual; convolutional kernels "
            "support the closed forms only (relu, leaky_relu, abs, identity, step, sign, "
            "arccos, erf, sin, cos, gaussian, gelu).")
    family, p0, p1 = dp
    return int(family), float(p0), float(p1)


def _classify(layer, where):
    """'conv' | 'pool' | 'flatten' | 'gap' | 'dense' | 'act' (duck-typed for Dense/Activation)."""
    if isinstance(layer, Conv):
        return "conv"
    if isinstance(layer, AvgPool):
        return "pool"
    if isinstance(layer, Flatten):
        return "flatten"
    if isinstance(layer, GlobalAvgPool):
        return "gap"
    if isinstance(layer, Dense):
        return "dense"
    if isinstance(layer, Activation):
        return "act"
    raise TypeError(f"{where} is not a layer (Conv, AvgPool, Flatten, GlobalAvgPool, Dense or "
                    f"Activation), got {layer!r}.")


def _activation_of(layer):
    return layer.fn


# ----------------------------------------------------------------------------- regime
def kernel_regime(layers):
    """Which covariance each spatial layer needs: ``"diagonal"`` or ``"full"`` per layer.

    Backwards from the readout: :class:`Flatten` needs only the spatial diagonal
    ``Sigma_{p,p}`` (Novak et al. 2019), :class:`GlobalAvgPool` and :class:`AvgPool` need every
    pair of positions ``Sigma_{p,p'}``; Conv and activations pass the requirement on.

    Parameters
    ----------
    layers : sequence of layers

    Returns
    -------
    tuple of str
        For each layer before the readout, the form of its input covariance.

    Examples
    --------
    >>> kernel_regime([Conv(), Activation("relu"), Flatten()])
    ('diagonal', 'diagonal')
    >>> kernel_regime([Conv(), AvgPool(2), Conv(), Flatten()])
    ('full', 'full', 'diagonal')
    """
    kinds = _check_layers(layers)
    r = kinds.index("flatten") if "flatten" in kinds else kinds.index("gap")
    need = "diagonal" if kinds[r] == "flatten" else "full"
    out = []
    for kind in reversed(kinds[:r]):
        if kind == "pool":
            need = "full"
        out.append(need)
    return tuple(reversed(out))


def _check_layers(layers):
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be a list of layers, got {layers!r}.")
    layers = list(layers)
    if not layers:
        raise ValueError("layers must not be empty.")
    kinds = [_classify(L, f"layers[{i}]") for i, L in enumerate(layers)]
    if kinds[0] != "conv":
        raise ValueError(f"layers[0] must be a Conv layer (the input is an image), got "
                         f"{layers[0]!r}.")
    readouts = [i for i, k in enumerate(kinds) if k in ("flatten", "gap")]
    if len(readouts) != 1:
        raise ValueError("layers must contain exactly one readout, Flatten() or "
                         f"GlobalAvgPool(), got {len(readouts)}.")
    r = readouts[0]
    for i, k in enumerate(kinds):
        if i < r and k == "dense":
            raise ValueError(f"layers[{i}]: a Dense layer before the readout; use Conv(filter=1) "
                             "for a per-position dense layer.")
        if i > r and k in ("conv", "pool"):
            raise ValueError(f"layers[{i}]: {type(layers[i]).__name__} after the readout "
                             f"(layers[{r}]); spatial layers must come before it.")
    return kinds


# ----------------------------------------------------------------------------- program
def _conv_tables(layer, h, w, idx):
    """:func:`_axis_tables` of a Conv layer on both axes of an ``h x w`` input; ``ValueError``
    naming ``layers[idx]`` when a 'valid' filter does not fit."""
    rows = _axis_tables(h, layer.filter, layer.padding)
    cols = _axis_tables(w, layer.filter, layer.padding)
    if rows[0] < 1 or cols[0] < 1:
        raise ValueError(f"layers[{idx}]: filter={layer.filter} with padding='valid' does not "
                         f"fit the {h} x {w} input it receives.")
    return rows, cols


def _axis_tables(n_in, q, padding):
    """Source index of every tap (``-1``: zero padding) on one axis.

    Returns ``n_out`` and ``src`` (q, n_out): tap ``a`` of output ``o`` reads input
    ``src[a, o]`` (``o + a - lo``, wrapped for ``"circular"``).
    """
    if padding == "valid":
        n_out, lo = n_in - q + 1, 0
    else:
        n_out, lo = n_in, (q - 1) // 2
    src = np.full((q, max(n_out, 1)), -1, dtype=np.int64)
    for a in range(q):
        for o in range(n_out):
            s = o + a - lo
            if padding == "circular":
                s %= n_in
            elif not 0 <= s < n_in:
                continue
            src[a, o] = s
    return n_out, src


def _pad_map(n_in, q, padding):
    """The padded axis of ``n_out + q - 1`` positions on which tap ``b`` of output ``o`` is
    position ``o + b``: ``pmap[pp]`` is its input index (``-1``: zero padding) and ``runs``
    lists the contiguous stretches ``(start, end, shift)``, ``input = pp + shift``.
    """
    n_out, src = _axis_tables(n_in, q, padding)
    npad = n_out + q - 1
    pmap = np.full(npad, -1, dtype=np.int64)
    for a in range(q):
        for o in range(n_out):
            pmap[o + a] = src[a, o]
    runs = []
    for pp in range(npad):
        s = pmap[pp]
        if s < 0:
            continue
        if runs and runs[-1][1] == pp and runs[-1][2] == s - pp:
            runs[-1][1] = pp + 1
        else:
            runs.append([pp, pp + 1, s - pp])
    return pmap, np.array(runs, dtype=np.int64).reshape(-1, 3)


def needs_width(layers):
    """Whether the kernels depend on the hidden width: a Conv after the first, or a Dense
    layer, in the standard parameterization (its NTK term scales with the fan-in)."""
    convs = [L for L in layers if isinstance(L, Conv)]
    return any(L.parameterization == "standard" for L in convs[1:]) or any(
        isinstance(L, Dense) and L.parameterization == "standard" for L in layers)


def _standard_terms(layer, fan_in):
    """fop columns 4, 5 of a Conv or Dense layer: ``-1, 0`` in the NTK parameterization, else
    the NTK's coefficient of the input kernel (the fan-in) and its bias term (1 with biases)."""
    if layer.parameterization != "standard":
        return [-1.0, 0.0]
    return [float(fan_in), 0.0 if layer.b_std is None else 1.0]


def _compile(layers, H, W, C=1, width=None):
    """Encode the layers as the engine's program; returns a dict of arrays and sizes.

    ``C``: the images' channels (the first Conv's fan-in per tap in the standard
    parameterization); ``width``: the hidden width (the channels after every Conv, the fan-in
    of the later layers in the standard parameterization).

    Besides the ops, each full-state op gets the layout of the state it reads (padded for the
    Conv that reads it, plain otherwise; an activation acts in place on the layout of the
    next op that is not an activation) and the layout it writes (that of the next op).
    """
    kinds = _check_layers(layers)
    regime = kernel_regime(layers)
    if width is None and needs_width(layers):
        raise ValueError('width is required: a layer after the first Conv uses '
                         'parameterization="standard", whose NTK depends on its fan-in (the '
                         "hidden width, the channels of every Conv).")
    r = kinds.index("flatten") if "flatten" in kinds else kinds.index("gap")
    chans = C                       # channels of the current representation
    dense_in = None                 # fan-in of the next Dense (after the readout)
    rows_i, rows_f, maps, need = [], [], [], []
    h, w = H, W
    nstat = 0
    nblock = 1
    pmax = 1
    skip = False
    for idx, (layer, kind) in enumerate(zip(layers, kinds)):
        if skip:
            skip = False
            continue
        mode = regime[idx] if idx < r else "scalar"
        nxt = kinds[idx + 1] if idx + 1 < len(kinds) else None
        iop = [0, 0, 0, -1, 0, h, w, h, w, 0, 0] + [0] * (_ce.NIOP - 11)
        fop = [0.0, 0.0, 0.0, 0.0, -1.0, 0.0]
        tabs = None
        req = (h, w, 0, False)        # the input layout this op needs: hp, wp, lo, wrapped
        if kind == "conv":
            q = layer.filter
            (ho, _), (wo, _) = _conv_tables(layer, h, w, idx)
            iop[0] = _ce.OP_CONV_F if mode == "full" else _ce.OP_CONV_D
            iop[1], iop[7], iop[8] = q, ho, wo
            iop[2] = _PAD_CODE[layer.padding]
            fop[0], fop[1] = layer.w_std ** 2, (layer.b_std or 0.0) ** 2
            fop[4:6] = _standard_terms(layer, chans)     # C_in: sum_taps K C_in = fan-in mean
            chans = width
            rmap, _ = _pad_map(h, q, layer.padding)
            cmap, _ = _pad_map(w, q, layer.padding)
            tabs = (rmap, cmap)
            hp, wp = rmap.shape[0], cmap.shape[0]
            iop[9], iop[10] = hp, wp
            pmax = max(pmax, hp, wp)
            lo = 0 if layer.padding == "valid" else (q - 1) // 2
            req = (hp, wp, lo, layer.padding == "circular")
            if mode == "full":
                nblock = max(nblock, ho * wp * wp)
            else:
                nblock = max(nblock, hp * wp)
            h, w = ho, wo
            if nxt == "act":              # fuse the activation that follows
                fam, p0, p1 = _family(_activation_of(layers[idx + 1]))
                iop[3], iop[4] = fam, nstat
                fop[2], fop[3] = p0, p1
                nstat += h * w
                skip = True
        elif kind == "act":
            fam, p0, p1 = _family(_activation_of(layer))
            iop[0] = {"full": _ce.OP_ACT_F, "diagonal": _ce.OP_ACT_D,
                      "scalar": _ce.OP_ACT_S}[mode]
            iop[3], iop[4] = fam, nstat
            fop[2], fop[3] = p0, p1
            nstat += h * w if mode != "scalar" else 1
            if mode != "scalar":          # in place: the layout of the next op (a scalar
                req = None                # activation may be the last layer: no next op)
        elif kind == "pool":
            win = layer.window
            if h // win < 1 or w // win < 1:
                raise ValueError(f"layers[{idx}]: window={win} is larger than the {h} x {w} "
                                 "input it receives.")
            iop[0], iop[1] = _ce.OP_POOL_F, win
            h, w = h // win, w // win
            iop[7], iop[8] = h, w
        elif kind == "flatten":
            iop[0] = _ce.OP_FLAT
            dense_in = None if chans is None else chans * h * w
        elif kind == "gap":
            iop[0] = _ce.OP_GAP
            dense_in = chans
        else:   # dense
            iop[0] = _ce.OP_DENSE
            fop[0], fop[1] = layer.w_std ** 2, (layer.b_std or 0.0) ** 2
            fop[4:6] = _standard_terms(layer, dense_in)
            dense_in = width
        rows_i.append(iop)
        rows_f.append(fop)
        maps.append(tabs)
        need.append(req)
        if kind == "pool" and idx + 1 < r and regime[idx + 1] == "diagonal" or (
                kind == "pool" and idx + 1 == r and kinds[r] == "flatten"):
            rows_i.append([_ce.OP_TODIAG, 0, 0, -1, 0, h, w, h, w, 0, 0]
                          + [0] * (_ce.NIOP - 11))
            rows_f.append([0.0, 0.0, 0.0, 0.0, -1.0, 0.0])
            maps.append(None)
            need.append((h, w, 0, False))
    nops = len(rows_i)
    # full-state layouts: an activation takes the layout of the next op that is not one
    full = {_ce.OP_CONV_F, _ce.OP_ACT_F, _ce.OP_POOL_F, _ce.OP_TODIAG, _ce.OP_GAP}
    # GlobalAvgPool sums a zero-bordered layout as well as a plain one (the zeros leave the sum
    # unchanged): it takes the layout of the Conv before it when that keeps the size, so no
    # buffer ever changes layout in a chain of "same" convolutions (no clearing per pair)
    for k in range(nops):
        if rows_i[k][0] == _ce.OP_GAP:
            convs = [j for j in range(k) if rows_i[j][0] == _ce.OP_CONV_F]
            if convs:
                j = convs[-1]
                hp, wp, lo, wrap = need[j]
                if not wrap and tuple(rows_i[j][5:7]) == tuple(rows_i[k][5:7]) and all(
                        rows_i[t][0] == _ce.OP_ACT_F for t in range(j + 1, k)):
                    need[k] = need[j]
    for k in range(nops - 1, -1, -1):
        if need[k] is None:
            need[k] = need[k + 1]
    lids = {}
    nfull = H * W
    for k in range(nops):
        if rows_i[k][0] not in full:
            continue
        hp, wp, lo, wrap = need[k]
        hin = rows_i[k][5] if rows_i[k][0] != _ce.OP_ACT_F else rows_i[k][7]
        win_ = rows_i[k][6] if rows_i[k][0] != _ce.OP_ACT_F else rows_i[k][8]
        border = hp > hin or wp > win_
        lid = lids.setdefault((hp, wp, lo, hin, win_), len(lids)) if border and not wrap else -1
        rows_i[k][_ce.I_HP:_ce.I_WRAP + 1] = [hp, wp, lo, lid, int(wrap)]
        nfull = max(nfull, hp * hp * wp * wp)
    for k in range(nops):
        code = rows_i[k][0]
        if code in (_ce.OP_CONV_F, _ce.OP_POOL_F):
            src = rows_i[k + 1]
        elif code == _ce.OP_ACT_F:
            src = rows_i[k]
        else:
            continue
        rows_i[k][_ce.O_HP:_ce.O_LID + 1] = src[_ce.I_HP:_ce.I_LID + 1]
    pmap = np.full((nops, 2, pmax), -1, dtype=np.int64)
    for k, tabs in enumerate(maps):
        if tabs is None:
            continue
        rmap, cmap = tabs
        pmap[k, 0, :rmap.shape[0]] = rmap
        pmap[k, 1, :cmap.shape[0]] = cmap
    # the plane engine (infntk._backends.conv.drive_planes): Conv layers (activations fused)
    # up to GlobalAvgPool (every plane) or Flatten (the plane (0, 0): the spatial diagonal)
    codes = [row[0] for row in rows_i]
    kgap = next((k for k, c in enumerate(codes) if c in (_ce.OP_GAP, _ce.OP_FLAT)), -1)
    pads = {row[2] for row in rows_i[:kgap] if row[0] in (_ce.OP_CONV_F, _ce.OP_CONV_D)}
    body = ((_ce.OP_CONV_F, _ce.OP_ACT_F) if codes[kgap] == _ce.OP_GAP else (_ce.OP_CONV_D,))
    planes = kgap > 0 and all(c in body for c in codes[:kgap]) and (
        pads == {_PAD_CODE["circular"]} or _PAD_CODE["circular"] not in pads)
    if planes and _ce.OP_ACT_F in codes[:kgap]:
        # every activation before GlobalAvgPool follows a Conv here (fused into it): an
        # unfused one would follow another activation (the series path) or a pooling (not a
        # plane program); the plane engine has no unfused-activation op
        raise RuntimeError("internal error: an unfused activation in a plane-engine program "
                           f"(op codes {codes[:kgap]})")
    return {"iop": np.array(rows_i, dtype=np.int64), "fop": np.array(rows_f, dtype=np.float64),
            "pmap": pmap, "nstat": max(nstat, 1), "nfull": nfull, "nblock": nblock,
            "regime": regime, "planes": planes, "kgap": kgap,
            "circ": pads == {_PAD_CODE["circular"]}, "nplane": pmax * pmax}


def _has_series(layers):
    """Whether the list needs the Hermite-series path: an activation without a closed-form
    dual, or two activations in a row (they act on one Gaussian as their composition, which
    has no closed form in general; applying the two duals in turn would treat the first
    activation's output as Gaussian)."""
    layers = list(layers)
    acts = [isinstance(L, Activation) for L in layers]
    return any(a and _activation_of(L).family is None for a, L in zip(acts, layers)) or any(
        a and b for a, b in zip(acts, acts[1:]))


def _tap_counts(src, n_in):
    """``(n_out, n_in)``: how many taps of each output read each input (-1: none)."""
    q, n_out = src.shape
    m = np.zeros((n_out, n_in))
    for a in range(q):
        for o in range(n_out):
            if src[a, o] >= 0:
                m[o, src[a, o]] += 1.0
    return m


def _compile_series(layers, H, W, C=1, width=None):
    """The program of :mod:`infntk._backends.conv_series` (every activation by its Hermite
    series; two activations in a row act as their composition, as in :class:`infntk.Network`).

    Refused (``ValueError``): a discontinuous activation (step, sign: Price's theorem, which
    the certified bound rests on, needs a continuous ``phi``), and an activation whose input
    variance passed through an ``AvgPool`` or ``GlobalAvgPool`` after an earlier activation
    (that variance would carry the series error of the pooled off-diagonal entries, which the
    bound does not cover; docs/conv.md).
    """
    kinds = _check_layers(layers)
    regime = kernel_regime(layers)
    if width is None and needs_width(layers):
        raise ValueError('width is required: a layer after the first Conv uses '
                         'parameterization="standard", whose NTK depends on its fan-in (the '
                         "hidden width, the channels of every Conv).")
    r = kinds.index("flatten") if "flatten" in kinds else kinds.index("gap")
    chans, dense_in = C, None
    rows_i, rows_f, srcs, acts, taps = [], [], [], {}, {}
    h, w = H, W
    nfull = H * H * W * W
    seen_act, tainted = False, None
    idx = 0
    while idx < len(layers):
        layer, kind = layers[idx], kinds[idx]
        mode = regime[idx] if idx < r else "scalar"
        iop = [0, 0, h, w, h, w, 0, 0, 0, 0]
        fop = [0.0, 0.0, 0.0, 0.0]
        k = len(rows_i)
        if kind == "conv":
            q = layer.filter
            (ho, rs), (wo, cs) = _conv_tables(layer, h, w, idx)
            iop[0] = _cs.OP_CONV_F if mode == "full" else _cs.OP_CONV_D
            iop[1], iop[4], iop[5], iop[9] = q, ho, wo, len(srcs)
            c, b2 = layer.w_std ** 2 / (q * q), (layer.b_std or 0.0) ** 2
            cv, tb = _standard_terms(layer, chans)
            fop = [c, b2, c, b2] if cv < 0 else [c, b2, cv, tb]
            srcs.append((rs, cs))
            taps[k] = (_tap_counts(rs, h), _tap_counts(cs, w))
            chans = width
            h, w = ho, wo
        elif kind == "act":
            fn = _activation_of(layer)
            while idx + 1 < len(layers) and kinds[idx + 1] == "act":
                idx += 1
                fn = compose_activations(fn, _activation_of(layers[idx]))
            check_continuous(fn)
            if tainted is not None:
                raise ValueError(
                    f"layers[{idx}]: activation {fn.name!r} after {tainted} that follows an "
                    "earlier activation: with activations that have no closed-form dual, its "
                    "input variance would carry the Hermite-series error of the pooled "
                    "off-diagonal entries, which the certified error bound does not cover. "
                    "Supported: activations before the first pooling layer, pooling after the "
                    "last activation.")
            iop[0] = {"full": _cs.OP_ACT_F, "diagonal": _cs.OP_ACT_D,
                      "scalar": _cs.OP_ACT_S}[mode]
            acts[k] = fn
            seen_act = True
        elif kind == "pool":
            win = layer.window
            if h // win < 1 or w // win < 1:
                raise ValueError(f"layers[{idx}]: window={win} is larger than the {h} x {w} "
                                 "input it receives.")
            iop[0], iop[1] = _cs.OP_POOL_F, win
            h, w = h // win, w // win
            iop[4], iop[5] = h, w
            if seen_act and tainted is None:
                tainted = f"layers[{idx}] (AvgPool)"
        elif kind == "flatten":
            iop[0] = _cs.OP_FLAT
            dense_in = None if chans is None else chans * h * w
        elif kind == "gap":
            iop[0] = _cs.OP_GAP
            dense_in = chans
            if seen_act and tainted is None:
                tainted = f"layers[{idx}] (GlobalAvgPool)"
        else:   # dense
            iop[0] = _cs.OP_DENSE
            c, b2 = layer.w_std ** 2, (layer.b_std or 0.0) ** 2
            cv, tb = _standard_terms(layer, dense_in)
            fop = [c, b2, c, b2] if cv < 0 else [c, b2, cv, tb]
            dense_in = width
        rows_i.append(iop)
        rows_f.append(fop)
        if iop[0] in (_cs.OP_CONV_F, _cs.OP_POOL_F):
            nfull = max(nfull, iop[2] * iop[2] * iop[3] * iop[3])
        if kind == "pool" and (idx + 1 < r and regime[idx + 1] == "diagonal" or (
                idx + 1 == r and kinds[r] == "flatten")):
            rows_i.append([_cs.OP_TODIAG, 0, h, w, h, w, 0, 0, 0, 0])
            rows_f.append([0.0, 0.0, 0.0, 0.0])
        idx += 1
    qmax = max([1] + [rs.shape[0] for rs, _ in srcs])
    nmax = max([1] + [max(rs.shape[1], cs.shape[1]) for rs, cs in srcs])
    src = np.full((max(len(srcs), 1), 2, qmax, nmax), -1, dtype=np.int64)
    for t, (rs, cs) in enumerate(srcs):
        src[t, 0, :rs.shape[0], :rs.shape[1]] = rs
        src[t, 1, :cs.shape[0], :cs.shape[1]] = cs
    return _cs.SeriesProgram(np.array(rows_i), np.array(rows_f), src, nfull, acts, taps, C)


# ----------------------------------------------------------------------------- kernels
def _check_images(X, name):
    arr = check_real_dtype(X, name)
    if arr.ndim != 4:
        raise ValueError(f"{name} must be 4-D (n, H, W, C), channels last, got shape {arr.shape}.")
    if 0 in arr.shape:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}.")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        bad = tuple(int(v) for v in np.argwhere(~np.isfinite(arr))[0])
        raise ValueError(f"{name} contains NaN or inf (first at index {bad}).")
    return compiled_view(arr)   # read-only inputs would compile the engine a second time


def check_image_pair(X1, X2=None):
    """Validate a pair of image stacks; ``(X1, X2, same)`` as float64 C arrays, ``same`` if
    ``X2`` is None (the image counterpart of :func:`infntk._validation.check_pair`).

    >>> import numpy as np
    >>> A, B, same = check_image_pair(np.zeros((2, 4, 4, 1)))
    >>> A.shape, same
    ((2, 4, 4, 1), True)
    """
    A = _check_images(X1, "X1")
    if X2 is None:
        return A, A, True
    B = _check_images(X2, "X2")
    if A.shape[1:] != B.shape[1:]:
        raise ValueError(f"X1 and X2 must have the same (H, W, C), got X1.shape={A.shape} "
                         f"and X2.shape={B.shape}.")
    return A, B, False


def _run(mode, A, B, prog, Q1, R1, SK1, Q2, R2, SK2, out_nngp, out_ntk):
    """The engine's driver over ``numba.get_num_threads()`` threads, one chunk of pairs each
    (the driver releases the GIL; pairs cost the same, so static chunks balance).

    The statistics are ``(n, nstat)`` arrays; the plane engine keeps them position-major
    (:func:`_stat_arrays` allocates them so, and ``.T`` is then the C array it reads; in mode
    0 they are its output)."""
    n1, n2 = A.shape[0], B.shape[0]
    npairs = n1 if mode == 0 else n1 * (n1 - 1) // 2 if mode == 1 else n1 * n2
    nch = chunk_count(npairs, per_thread=1)
    nb = next((b for b in (32, 16) if b * prog["nplane"] <= _PLANE_ENTRIES), 8)
    nb = max(1, min(nb, -(-npairs // nch)))     # a batch of consecutive pairs per chunk at least
    if prog["planes"]:              # position-major images and statistics
        At = np.ascontiguousarray(A.transpose(1, 3, 2, 0))
        Bt = At if B is A else np.ascontiguousarray(B.transpose(1, 3, 2, 0))
        st = [a.T if mode == 0 else np.ascontiguousarray(a.T) for a in (Q1, R1, SK1, Q2, R2, SK2)]
        if mode != 0 and prog["regime"][0] == "diagonal":     # Flatten: _ce._pl_stats
            st += [np.ascontiguousarray(Q1), _blocks(Q2, nb), _blocks(R2, nb)]
        else:                       # unused; the same array types (one compiled signature)
            st += [np.zeros((1, 1)), np.zeros((1, 1, 1)), np.zeros((1, 1, 1))]

    # the plane engine's family group: None if every activation is of the ReLU family (then
    # no other family's dual is compiled), else 1
    allf = None if set(prog["iop"][:, 3].tolist()) <= {-1, FAMILY_ABRELU} else 1

    def chunk(c):
        if prog["planes"]:
            _ce.drive_planes(mode, At, Bt, prog["iop"], prog["fop"], prog["kgap"], prog["circ"],
                             nb, prog["nplane"], c, nch, *st, out_nngp, out_ntk, allf)
            return
        _ce.drive(mode, A, B, prog["iop"], prog["fop"], prog["pmap"], prog["nfull"],
                  prog["nblock"], c, nch, Q1, R1, SK1, Q2, R2, SK2, out_nngp, out_ntk)

    with engine_lock():
        run_chunks(chunk, nch)
    if prog["planes"] and mode == 1:    # the plane engine writes the upper triangle
        for out in (out_nngp, out_ntk):   # (the lower one of the transpose; by blocks, no
            mirror_lower_to_upper(out.T)  # index arrays of n^2 / 2 entries)


def _blocks(a, nb):
    """``(n, m)`` -> ``(ceil(n / nb), m, nb)``: blocks of ``nb`` rows, each transposed (rows
    beyond ``n`` zero)."""
    n, m = a.shape
    out = np.zeros((-(-n // nb) * nb, m))
    out[:n] = a
    return np.ascontiguousarray(out.reshape(-1, nb, m).transpose(0, 2, 1))


def _stat_arrays(n, prog):
    """Zeroed ``(n, nstat)`` statistics arrays in the layout of the program's engine."""
    if prog["planes"]:
        return [np.zeros((prog["nstat"], n)).T for _ in range(3)]
    return [np.zeros((n, prog["nstat"])) for _ in range(3)]


def _self_statistics(X, prog):
    n = X.shape[0]
    Q, R, SK = _stat_arrays(n, prog)
    kn = np.empty((n, 1))
    kt = np.empty((n, 1))
    _run(0, X, X, prog, Q, R, SK, Q, R, SK, kn, kt)
    return Q, R, SK, np.concatenate([kn, kt], axis=1)


def _width(width):
    return None if width is None else check_positive_int(width, "width")


def conv_kernels(layers, X1, X2=None, width=None, tol=1e-10):
    """NNGP and NTK Gram matrices of an infinitely wide convolutional network.

    Parameters
    ----------
    layers : sequence of layers
        ``Conv`` first; ``Conv``, ``AvgPool`` and activations up to exactly one readout
        (``Flatten()`` or ``GlobalAvgPool()``); then Dense layers and activations.
    X1 : (n1, H, W, C) array
        Images, channels last.
    X2 : (n2, H, W, C) array, optional
        ``None`` means ``X1`` (symmetric: each pair ``i <= j`` is computed once).
    width : int, optional
        The hidden width (channels of every Conv), required when a layer after the first
        Conv uses ``parameterization="standard"`` (its NTK depends on the fan-in).
    tol : float
        Only for activations without a closed form (tanh, sigmoid, softplus, silu, elu,
        callables): the Hermite-series orders are chosen so that the certified bound on
        ``|computed - exact|`` is at most ``tol`` times the largest diagonal entry
        (``infntk.Network(layers, tol=...).kernels`` returns that bound as
        ``Kernels.error_bound``; docs/conv.md).

    Returns
    -------
    nngp, ntk : (n1, n2) float64 arrays

    Notes
    -----
    Input covariance ``Sigma^0_{p,p'} = <x_p, y_p'> / C``; each Conv applies the patch trace
    ``Sigma'_{p,p'} = w^2 / q^2 sum_{a,b} K_{p+(a,b), p'+(a,b)} + b^2`` and
    ``Theta' = w^2 / q^2 sum Theta + Sigma'`` (standard parameterization: ``Theta' = w^2 / q^2
    sum Theta + C_in sum K + 1``, ``C_in`` the layer's input channels, without the ``1`` if
    ``b_std`` is None); an activation maps ``Sigma -> K = E[phi phi]``
    and ``Theta -> Theta E[phi' phi']`` (Arora et al. 2019; Novak et al. 2019). The readout
    averages the diagonal (Flatten) or every entry (GlobalAvgPool); Dense layers after it
    map ``s -> w^2 s + b^2``, ``t -> w^2 t + s'``.

    Cost per pair with ``P = H W``: ``O(P q L)`` for Flatten networks without pooling (only the
    spatial diagonal), ``O(P^2 q L)`` otherwise (two ``q``-tap passes per Conv); memory five
    arrays of ``(H + q - 1)^2 (W + q - 1)^2`` floats per thread (the state padded for the
    patch passes, docs/conv.md), threads from ``numba.get_num_threads()``. The self terms are
    computed once per image.

    References
    ----------
    Arora, Du, Hu, Li, Salakhutdinov, Wang (2019), On exact computation with an infinitely
    wide neural net. Novak et al. (2019), Bayesian deep convolutional networks with many
    channels are Gaussian processes. Garriga-Alonso et al. (2019), Deep convolutional
    networks as shallow Gaussian processes.

    Examples
    --------
    >>> import numpy as np
    >>> from infntk import Activation, Dense
    >>> from infntk.conv import Conv, GlobalAvgPool, conv_kernels
    >>> X = np.random.default_rng(0).standard_normal((3, 4, 4, 1))
    >>> layers = [Conv(3, "same", 1.5, 0.1), Activation("relu"), GlobalAvgPool(), Dense(1.5, 0.1)]
    >>> nngp, ntk = conv_kernels(layers, X)
    >>> ntk.shape, bool(np.allclose(ntk, ntk.T))
    ((3, 3), True)
    """
    if _has_series(layers):
        nngp, ntk, _, _ = conv_kernels_bounded(layers, X1, X2, width, tol)
        return nngp, ntk
    A, B, same = check_image_pair(X1, X2)
    _, H, W, C = A.shape
    prog = _compile(layers, H, W, C, _width(width))
    Q1, R1, SK1, k1 = _self_statistics(A, prog)
    n1, n2 = A.shape[0], B.shape[0]
    nngp = np.empty((n1, n2))
    ntk = np.empty((n1, n2))
    if same:
        Q2, R2, SK2 = Q1, R1, SK1
    else:
        Q2, R2, SK2, _ = _self_statistics(B, prog)
    _run(1 if same else 2, A, B, prog, Q1, R1, SK1, Q2, R2, SK2, nngp, ntk)
    if same:
        idx = np.arange(n1)
        nngp[idx, idx] = k1[:, 0]
        ntk[idx, idx] = k1[:, 1]
    if not (np.isfinite(nngp).all() and np.isfinite(ntk).all()):
        raise OverflowError("the kernel overflows float64; reduce the depth, w_std or the "
                            "input scale.")
    return nngp, ntk


def conv_kernels_bounded(layers, X1, X2=None, width=None, tol=1e-10):
    """``(nngp, ntk, error_bound, orders)``: :func:`conv_kernels` with the certified bound.

    ``error_bound`` bounds ``|computed - exact|`` for every entry of both matrices (``None``
    for closed forms, accurate to rounding); ``orders`` are the Hermite-series orders of the
    activations (``None`` for closed forms). Method: docs/conv.md, "Activations without a
    closed form".

    >>> import numpy as np
    >>> from infntk import Activation
    >>> X = np.random.default_rng(0).standard_normal((3, 3, 3, 1))
    >>> nngp, ntk, bound, orders = conv_kernels_bounded(
    ...     [Conv(3, "same", 1.5, 0.1), Activation("tanh"), Flatten()], X, tol=1e-10)
    >>> bool(bound <= 1e-10 * max(np.diag(ntk).max(), np.diag(nngp).max()))
    True
    """
    if not _has_series(layers):
        nngp, ntk = conv_kernels(layers, X1, X2, width)
        return nngp, ntk, None, None
    A, B, same = check_image_pair(X1, X2)
    _, H, W, C = A.shape
    prog = _compile_series(layers, H, W, C, _width(width))
    nngp, ntk, bound, orders, _ = _cs.series_conv_kernels(prog, A, B, same, check_tol(tol))
    return nngp, ntk, bound, orders


def conv_diag(layers, X, width=None, tol=1e-10):
    """``k(x, x)`` of every image, ``(nngp, ntk)`` each ``(n,)``, without the Gram matrix
    (``width``, ``tol`` as in :func:`conv_kernels`)."""
    A = _check_images(X, "X")
    _, H, W, C = A.shape
    if _has_series(layers):
        prog = _compile_series(layers, H, W, C, _width(width))
        return _cs.series_self_kernels(prog, A, check_tol(tol))
    _, _, _, k = _self_statistics(A, _compile(layers, H, W, C, _width(width)))
    return k[:, 0].copy(), k[:, 1].copy()


class _ConvPlan:
    """What :class:`ConvEngine` keeps between blocks: both sides' self statistics."""

    error_bound = None
    orders = None

    def __init__(self, rows1, rows2):
        self.rows1 = rows1
        self.rows2 = rows2


class ConvEngine:
    """The Gram driver's engine protocol (:mod:`infntk._gram`) for a convolutional network
    of closed-form activations, so that its Gram matrices are made block by block like every
    other engine's: memory-mapped outputs written where they belong, the memory check before
    allocating, each block checked for overflow, and resumable block-wise writes.

    ``rows(X)``: the self statistics of the images (:func:`_self_statistics`, once per image).
    ``block``: the block's rows against the columns it needs, by the same compiled pair
    engines as :func:`conv_kernels` (symmetric: the rows before the block against the block
    as a cross kernel, the block's own square as a symmetric one, its diagonal from the self
    kernels; every pair with its smaller index first, so the results are those of
    :func:`conv_kernels` bit for bit, whatever the block size). The driver's BLAS product is
    not used (``gram_product = False``).
    """

    gram_product = False

    def __init__(self, layers, shape, width=None):
        if _has_series(layers):
            raise ValueError("ConvEngine takes closed-form activations only; a network with "
                             "a series activation goes through conv_kernels_bounded.")
        H, W, C = shape
        self.layers = layers
        self.prog = _compile(layers, H, W, C, _width(width))

    def rows(self, X):
        # the statistics (3 arrays of n x nstat floats) and the engine's copies of them in
        # its own layout (up to 3 more), checked before the self runs fill them
        check_memory(6 * 8 * X.shape[0] * self.prog["nstat"],
                     f"the self statistics of {X.shape[0]} images")
        return _self_statistics(X, self.prog)

    def prepare(self, rows1, rows2, symmetric):
        return _ConvPlan(rows1, rows1 if symmetric else rows2)

    def block(self, plan, X1, X2, G, row0, symmetric, out_nngp, out_ntk):
        nb = out_nngp.shape[0]
        r1 = row0 + nb
        Q1, R1, SK1, k1 = plan.rows1
        Q2, R2, SK2, _ = plan.rows2
        a = (Q1[row0:r1], R1[row0:r1], SK1[row0:r1])
        A = X1[row0:r1]
        if not symmetric:
            _run(2, A, X2, self.prog, *a, Q2, R2, SK2, out_nngp, out_ntk)
            return
        if row0 > 0:              # the rows before the block: a cross kernel, each pair
            # with its smaller index first, as the symmetric pair list orders it (the same
            # floats as the whole-matrix engine, for every block size)
            cn, ct = np.empty((row0, nb)), np.empty((row0, nb))
            _run(2, X1[:row0], A, self.prog, Q1[:row0], R1[:row0], SK1[:row0], *a, cn, ct)
            out_nngp[:, :row0] = cn.T
            out_ntk[:, :row0] = ct.T
        sn, stt = np.empty((nb, nb)), np.empty((nb, nb))
        if nb > 1:
            _run(1, A, A, self.prog, *a, *a, sn, stt)
        idx = np.arange(nb)
        sn[idx, idx] = k1[row0:r1, 0]
        stt[idx, idx] = k1[row0:r1, 1]
        out_nngp[:, row0:r1] = sn
        out_ntk[:, row0:r1] = stt

    def finish(self, plan):
        pass

    def diag(self, rows):
        k = rows[3]
        return k[:, 0].copy(), k[:, 1].copy()
