"""The ``infntk`` command line: ``kernel``, ``sweep`` and ``demo``.

Run ``infntk --help`` (or ``python -m infntk --help``) for the usage. User errors (missing or
unreadable files, bad shapes, bad parameters) print one line ``infntk: error: ...`` to stderr
and exit with status 2, without a traceback.

* ``infntk kernel X.npy [--y Y.csv] --out K.npz``: NNGP and NTK Gram matrices. ``.npz`` holds
  the arrays ``nngp`` and ``ntk``; ``.npy`` outputs are written block by block to memory-mapped
  files (``np.lib.format.open_memmap``), so ``n`` is limited by the disk, not the RAM.
* ``infntk sweep --out-csv t.csv --out-png t.png``: the width-convergence study of
  :func:`infntk.convergence.width_sweep` (errors of finite networks against the analytic
  kernels), a table and a log-log plot with the fitted slope.
* ``infntk demo``: the kernels of a small built-in data set, their timing, and a self-check
  of the closed form against an independent NumPy evaluation.

Files (see :mod:`infntk._io`): outputs appear only when complete (temporary file, fsync,
``os.replace``); an output that is an input file is refused; existing outputs are replaced only
with ``--force``. ``.npy`` outputs record their progress next to them
(``OUT.npy.partial`` + ``OUT.npy.progress.json``): after a kill or Ctrl-C (exit status 130),
the same command resumes and gives bitwise the same file. Options are checked before anything
is computed.

Example
-------
>>> from infntk.cli import main
>>> main(["demo", "--quiet"])  # doctest: +ELLIPSIS
self-check PASS: ...
0
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

from . import _gram, _io, _warmup
from ._numba_config import INTERRUPTS, interrupted_by_user
from .fcnet import FCNet
from .layer_spec import GRAMMAR, parse_layers
from .network import Network

__all__ = ["main", "build_parser", "UsageError"]


class UsageError(Exception):
    """A user error: reported as one line, exit status 2."""


class _Interrupted(Exception):
    """Ctrl-C: reported as one line, exit status 130 (128 + SIGINT)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(f"{message} (see {self.prog} --help)")


# ----------------------------------------------------------------------------- helpers
def _parse_value(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _activation_params(pairs):
    params = {}
    for item in pairs or ():
        if "=" not in item:
            raise UsageError(f"--param expects NAME=VALUE (e.g. alpha=0.1), got {item!r}")
        key, value = item.split("=", 1)
        params[key.strip()] = _parse_value(value.strip())
    return params


def _b_std(text):
    if text.lower() in ("none", "no", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _widths(text):
    try:
        out = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, e.g. 64,256,1024, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("expected at least one width")
    return out


def load_matrix(path, name, images=False):
    """Read a 2-D float array from ``.npy`` or ``.csv`` (comma-separated, ``#`` comments).

    ``.npy`` files are memory-mapped (read-only), so large inputs are not copied at once.
    ``images=True``: a 4-D ``(n, H, W, C)`` ``.npy`` array of images instead.
    """
    if not os.path.isfile(path):
        raise UsageError(f"{name}: no such file {path!r}")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        elif ext in (".csv", ".txt"):
            arr = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
        else:
            raise UsageError(f"{name}: unsupported file type {ext!r} for {path!r} "
                             "(use .npy or .csv)")
    except UsageError:
        raise
    except (ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"{name}: cannot read {path!r}: {first}") from None
    if images:
        if arr.ndim != 4:
            raise UsageError(f"{name}: a convolutional network takes images, a 4-D .npy array "
                             f"(n, H, W, C), got shape {arr.shape} in {path!r}")
        return arr
    if arr.ndim != 2:
        raise UsageError(f"{name}: expected a 2-D array (one row per point) in {path!r}, "
                         f"got shape {arr.shape}")
    return arr


def _positive(name, minimum=1):
    """An argparse type: an integer >= ``minimum`` (checked while parsing, before computing)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} expects an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {value}")
        return value
    return parse


#: figure formats the sweep plot can be written in (those of matplotlib's Agg backend)
_PLOT_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff",
                 ".webp")


def _cli_words(message):
    """A library message in command-line terms (``--force`` instead of ``overwrite=True``)."""
    for api in ("overwrite=True (--force on the command line)", "overwrite=True (--force)",
                "overwrite=True"):
        message = message.replace(api, "--force")
    return message


def _user(fn, *a, **kw):
    """Call ``fn``; its ``ValueError``/``TypeError`` (the package's argument checks, whose
    messages name the argument) become one-line user errors."""
    try:
        return fn(*a, **kw)
    except (ValueError, TypeError, NotImplementedError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(msg) from None


def _network_from_text(text, width=None):
    """``--layers TEXT`` -> an :class:`infntk.Network` (grammar: :mod:`infntk.layer_spec`);
    every problem becomes a one-line :class:`UsageError` naming ``--layers``."""
    layers = _user(parse_layers, text)
    try:
        return Network(layers, width=width)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise UsageError(f"--layers: {str(exc).splitlines()[0]}") from None


def _make_net(args):
    if getattr(args, "layers", None):
        return _network_from_text(args.layers, args.width)
    return _user(FCNet, args.activation, depth=args.depth, w_std=args.w_std, b_std=args.b_std,
                 parameterization=args.parameterization, width=args.width,
                 **_activation_params(args.param))


def _add_net_args(p):
    g = p.add_argument_group("network")
    g.add_argument("--activation", default="relu",
                   help="activation name (see infntk.ACTIVATIONS), default relu")
    g.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="activation parameter, repeatable (e.g. --param alpha=0.1)")
    g.add_argument("--depth", type=_positive("--depth", 0), default=3,
                   help="hidden layers L >= 0 (default 3)")
    g.add_argument("--w-std", type=float, default=1.0, help="weight std (default 1)")
    g.add_argument("--b-std", type=_b_std, default=0.0,
                   help="bias std, or 'none' for no bias parameters (default 0)")
    g.add_argument("--parameterization", choices=("ntk", "standard"), default="ntk")
    g.add_argument("--width", type=_positive("--width"), default=None,
                   help="finite hidden width (required by --parameterization standard)")
    g.add_argument("--layers", metavar="TEXT", default=None,
                   help="a composed network instead of --activation/--depth/--w-std/--b-std/"
                        "--parameterization: " + GRAMMAR.replace("%", "%%"))


# ----------------------------------------------------------------------------- kernel
def compute_to(net, X, Y, outs, block_rows=256, progress=True, resume=None):
    """Fill the ``(n1, n2)`` arrays ``outs = {"nngp": a, "ntk": b}`` (or one of them).

    One call of the Gram driver (:func:`infntk._gram.gram`): for ``Y is None`` only the lower
    triangle is computed and then mirrored; a kernel not in ``outs`` is computed into a
    per-block scratch buffer only. The arrays may be ``np.memmap``: memory stays
    ``O(block_rows * n2)`` beyond the inputs. ``resume``: a :class:`infntk._io.BlockProgress`
    (blocks already on disk are skipped, new ones recorded).
    """
    from tqdm.auto import tqdm
    A, B, same = _user(net._check_inputs, X, Y, ("X", "--y"))
    n1, n2 = A.shape[0], B.shape[0]
    total = n1 * (n1 + 1) // 2 if same else n1 * n2
    with tqdm(total=total, unit="pair", unit_scale=True, disable=not progress,
              desc="kernel", file=sys.stderr) as bar:
        _user(_gram.gram, net._gram_engine(A), A, B, same, outs.get("nngp"),
              outs.get("ntk"), block_rows, kinds=tuple(outs), progress=bar.update,
              resume=resume, label=repr(net))
    for arr in outs.values():
        if isinstance(arr, np.memmap):
            arr.flush()
    return outs


def _cmd_kernel(args):
    net = _make_net(args)
    images = getattr(net, "_conv", False)
    if images and not net.blockwise:
        return _cmd_kernel_images(args, net)
    X = load_matrix(args.X, "X", images=images)
    Y = load_matrix(args.y, "--y", images=images) if args.y else None
    if not images and Y is not None and Y.shape[1] != X.shape[1]:
        raise UsageError(f"X and --y must have the same number of columns, got X {X.shape} "
                         f"and Y {Y.shape}")
    # validate values (NaN, empty) up front, without copying a float64 memmap
    X, Y2, same = _user(net._check_inputs, X, Y, ("X", "--y"))
    Y = None if same else Y2
    try:
        net._gram_engine(X)         # settings that fail only at compute time, checked now
    except OverflowError as exc:
        raise UsageError(str(exc)) from None
    kinds = ("nngp", "ntk") if args.kernel == "both" else (args.kernel,)
    n1, n2 = X.shape[0], (X if Y is None else Y).shape[0]
    out = args.out
    ext = os.path.splitext(out)[1].lower()
    inputs = [args.X] + ([args.y] if args.y else [])
    if ext == ".npz":
        paths = {"npz": out}
    elif ext == ".npy":
        stem = out[:-4]
        paths = {k: (out if len(kinds) == 1 else f"{stem}_{k}.npy") for k in kinds}
    else:
        raise UsageError(f"--out must end in .npz or .npy, got {out!r}")
    for p in paths.values():   # before computing: inputs, existing files, directory
        try:
            _io.check_output_path(p, inputs, overwrite=True, name="--out")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        except FileNotFoundError as exc:
            raise UsageError(exc.strerror) from None
    t0 = time.perf_counter()
    if ext == ".npz":
        if os.path.exists(out) and not args.force:
            raise UsageError(f"--out: {out!r} exists; pass --force to replace it")
        _gram.check_memory(8 * n1 * n2 * len(kinds), f"the {n1} x {n2} .npz output")
        outs = {k: np.empty((n1, n2)) for k in kinds}
        compute_to(net, X, Y, outs, args.block_rows, not args.no_progress)
        with _io.atomic_open(out, "wb", inputs, overwrite=args.force, name="--out") as fh:
            np.savez(fh, **outs)
        written = [out]
    else:
        key = {"inputs": _io.hash_arrays(X, Y), "network": repr(net), "tol": net.tol,
               "kinds": list(kinds), "block_rows": args.block_rows}
        prog = _io.BlockProgress(paths, (n1, n2), key, inputs, overwrite=args.force)
        try:
            outs = prog.open()
        except FileExistsError as exc:
            raise UsageError(_cli_words(exc.strerror)) from None
        if prog.resumed:
            print(f"resuming {', '.join(paths.values())}: {len(prog.blocks)} blocks already "
                  "on disk", file=sys.stderr)
        try:
            compute_to(net, X, Y, outs, args.block_rows, not args.no_progress, resume=prog)
        except INTERRUPTS as exc:
            if not interrupted_by_user(exc):
                raise
            raise _Interrupted("rerun the same command to resume") from None
        except BaseException:
            prog.discard()          # a failed computation leaves nothing behind
            raise
        del outs
        prog.commit()
        written = list(paths.values())
    dt = time.perf_counter() - t0
    print(f"wrote {', '.join(written)}: {'+'.join(kinds)} ({n1} x {n2}) of {net!r} "
          f"in {dt:.2f} s")
    return 0


def _cmd_kernel_images(args, net):
    """``infntk kernel`` for a convolutional ``--layers`` network with a series activation:
    images ``(n, H, W, C)``.

    Its certified bound is planned over the whole matrix, so the kernels are computed in
    memory and written atomically (``.npz``, or ``.npy`` files; not block-wise, so not
    resumable). Closed-form convolutional networks take :func:`_cmd_kernel`'s block-wise,
    resumable path.
    """
    from .conv import check_image_pair
    X = load_matrix(args.X, "X", images=True)
    Y = load_matrix(args.y, "--y", images=True) if args.y else None
    A, B, same = _user(check_image_pair, X, Y)
    kinds = ("nngp", "ntk") if args.kernel == "both" else (args.kernel,)
    n1, n2 = A.shape[0], B.shape[0]
    out = args.out
    ext = os.path.splitext(out)[1].lower()
    inputs = [args.X] + ([args.y] if args.y else [])
    if ext == ".npz":
        paths = {"npz": out}
    elif ext == ".npy":
        paths = {k: (out if len(kinds) == 1 else f"{out[:-4]}_{k}.npy") for k in kinds}
    else:
        raise UsageError(f"--out must end in .npz or .npy, got {out!r}")
    for p in paths.values():
        try:
            _io.check_output_path(p, inputs, overwrite=args.force, name="--out")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        except (FileExistsError, FileNotFoundError) as exc:
            raise UsageError(_cli_words(exc.strerror)) from None
    _gram.check_memory(8 * n1 * n2 * 2, f"the {n1} x {n2} convolutional kernels")
    t0 = time.perf_counter()
    try:
        k = _user(net.kernels, A, None if same else B)
    except INTERRUPTS as exc:
        if not interrupted_by_user(exc):
            raise
        raise _Interrupted("nothing was written") from None
    res = {"nngp": k.nngp, "ntk": k.ntk}
    if ext == ".npz":
        with _io.atomic_open(out, "wb", inputs, overwrite=args.force, name="--out") as fh:
            np.savez(fh, **{kk: res[kk] for kk in kinds})
    else:
        for kk, p in paths.items():
            with _io.atomic_open(p, "wb", inputs, overwrite=args.force, name="--out") as fh:
                np.save(fh, res[kk])
    print(f"wrote {', '.join(paths.values())}: {'+'.join(kinds)} ({n1} x {n2}) of {net!r} "
          f"in {time.perf_counter() - t0:.2f} s")
    return 0


# ----------------------------------------------------------------------------- sweep
def _cmd_sweep(args):
    from .convergence import default_points, width_sweep
    if args.seeds < 2:
        raise UsageError("--seeds must be >= 2 (the table reports standard deviations)")
    ext = os.path.splitext(args.out_png)[1].lower()
    if ext not in _PLOT_FORMATS:
        raise UsageError(f"--out-png: unsupported figure format {ext or args.out_png!r}; "
                         f"use one of {', '.join(_PLOT_FORMATS)}")
    inputs = [args.X] if args.X else []
    for opt, p in (("--out-csv", args.out_csv), ("--out-png", args.out_png)):
        try:
            _io.check_output_path(p, inputs, overwrite=args.force, name=opt)
        except FileExistsError as exc:
            raise UsageError(_cli_words(exc.strerror)) from None
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError(getattr(exc, "strerror", None) or str(exc)) from None
    X = load_matrix(args.X, "--X") if args.X else _user(default_points, args.n_points, args.dim,
                                                        seed=0)
    _make_net(args)  # the network's arguments, checked before the sweep runs
    t0 = time.perf_counter()
    network = (_network_from_text(args.layers, args.width or args.widths[0]) if args.layers
               else args.activation)           # a Network: depth .. parameterization unused
    res = _user(width_sweep, network, depth=args.depth, widths=args.widths, seeds=args.seeds,
                      X=np.asarray(X, dtype=np.float64), w_std=args.w_std, b_std=args.b_std,
                      parameterization=args.parameterization,
                      progress=not args.no_progress, checkpoint=args.checkpoint,
                      **_activation_params(args.param))
    dt = time.perf_counter() - t0
    if not res.complete:   # interrupted: no table or plot claiming the full grid
        done = len(res.records)
        total = len(args.widths) * args.seeds
        hint = (f"; rerun the same command to resume from {args.checkpoint}" if args.checkpoint
                else "; pass --checkpoint FILE to make a sweep resumable")
        raise _Interrupted(f"sweep stopped after {done} of {total} runs, nothing written{hint}")
    metrics = [m for m in ("ntk.relfro", "nngp.relfro", "ntk.maxabs", "nngp.maxabs")
               if m in res.metrics]
    cols = ("width", "n", "mean", "std", "ci_low", "ci_high", "median")
    with _io.atomic_open(args.out_csv, "w", inputs, overwrite=args.force,
                         name="--out-csv") as fh:
        fh.write("metric," + ",".join(cols) + "\n")
        for m in metrics:
            s = res.summary(m)
            for i in range(len(s["width"])):
                fh.write(m + "," + ",".join(f"{s[c][i]:.10g}" for c in cols) + "\n")
    fits = {m: res.fit_exponent(m) for m in metrics[:2]} if len(res.widths) > 1 else {}
    _plot_sweep(res, metrics[:2], fits, args.out_png)
    for f in fits.values():
        print(f)
    print(f"wrote {args.out_csv} and {args.out_png} ({len(res.widths)} widths x "
          f"{args.seeds} seeds in {dt:.1f} s)")
    return 0


def _plot_sweep(res, metrics, fits, path):
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for m, color in zip(metrics, ("C0", "C1")):
        errs = res.errors(m)
        for w, e in errs.items():
            ax.scatter(np.full(e.size, w), e, s=8, color=color, alpha=0.4)
        s = res.summary(m)
        ax.plot(s["width"], s["mean"], "o-", color=color, label=f"{m} (mean)")
        if m in fits:
            f = fits[m]
            ws = np.asarray(s["width"], dtype=float)
            ax.plot(ws, np.exp(f.intercept) * ws ** f.slope, "--", color=color,
                    label=f"fit: slope {f.slope:.2f} +- {f.stderr:.2f}")
    ws = np.asarray(res.widths, dtype=float)
    ref = res.summary(metrics[0])["mean"][0] * (ws / ws[0]) ** -0.5
    ax.plot(ws, ref, ":", color="gray", label="slope -1/2")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(ws, [str(int(w)) for w in ws])
    ax.set_xlabel("width m")
    ax.set_ylabel("relative error (Frobenius)")
    ax.set_title(f"empirical vs analytic kernels ({res.config.get('activation', '')}, "
                 f"L={res.config.get('depth', '')})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with _io.atomic_open(path, "wb", overwrite=True, name="--out-png") as fh:
        fig.savefig(fh, dpi=110, format=os.path.splitext(path)[1].lower().lstrip(".") or "png")
    plt.close(fig)


# ----------------------------------------------------------------------------- demo
#: The built-in demo data: six points in R^3 (an axis, its negative, two diagonals, a short
#: and a long vector, so that angles and norms both vary).
DEMO_X = np.array([[1.0, 0.0, 0.0],
                   [-1.0, 0.0, 0.0],
                   [0.6, 0.8, 0.0],
                   [0.0, 0.6, -0.8],
                   [0.3, -0.2, 0.1],
                   [2.0, 1.0, 2.0]])

_SELF_CHECK_TOL = 1e-12


def _naive_relu_kernels(X, depth, w_std):
    """Deliberately naive NumPy evaluation of the bias-free ReLU recursion (Cho & Saul 2009):
    ``arccos`` of the clipped correlation, used only as an independent self-check of the
    compiled closed forms on well-separated inputs (it loses accuracy for nearly parallel rows,
    which the demo data do not have; the diagonal correlation is set to exactly 1)."""
    w2 = w_std * w_std
    S = w2 * (X @ X.T) / X.shape[1]
    T = S.copy()
    for _ in range(depth):
        q = np.sqrt(np.diag(S))
        rho = np.clip(S / np.outer(q, q), -1.0, 1.0)
        np.fill_diagonal(rho, 1.0)  # exact on the diagonal (arccos(1 - eps) ~ 1.5e-8)
        th = np.arccos(rho)
        S_new = w2 * np.outer(q, q) * (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi)
        Sdot = w2 * (np.pi - th) / (2 * np.pi)
        S, T = S_new, S_new + Sdot * T
    return S, T


def _cmd_demo(args):
    depth, w_std = args.depth, math.sqrt(2.0)
    net = FCNet("relu", depth=depth, w_std=w_std, b_std=None)
    X = DEMO_X
    t0 = time.perf_counter()
    k = net.kernels(X)
    t_first = time.perf_counter() - t0
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        k = net.kernels(X)
    t_warm = (time.perf_counter() - t0) / reps
    S_ref, T_ref = _naive_relu_kernels(X, depth, w_std)
    scale = max(np.abs(k.ntk).max(), np.abs(k.nngp).max())
    err = max(np.abs(k.ntk - T_ref).max(), np.abs(k.nngp - S_ref).max()) / scale
    # exact diagonal: w_std^2 = 2 preserves Sigma(x, x) = 2|x|^2/d, Sdot = 1, so
    # Theta(x, x) = (L + 1) * 2|x|^2/d
    diag_exact = (depth + 1) * 2.0 * (X * X).sum(1) / X.shape[1]
    err_diag = np.abs(net.diag(X).ntk - diag_exact).max() / np.abs(diag_exact).max()
    ok = err <= _SELF_CHECK_TOL and err_diag <= _SELF_CHECK_TOL
    if not args.quiet:
        with np.printoptions(precision=5, suppress=True, linewidth=100):
            print(f"infntk demo: {net!r}")
            print(f"inputs X ({X.shape[0]} points in R^{X.shape[1]}):\n{X}")
            print(f"NNGP Sigma^(L+1)(X, X):\n{k.nngp}")
            print(f"NTK Theta^(L+1)(X, X):\n{k.ntk}")
        print(f"time: {1e3 * t_first:.1f} ms first call (includes Numba compilation, or loading its cache), "
              f"{1e6 * t_warm:.0f} us per call after")
    status = "PASS" if ok else "FAIL"
    print(f"self-check {status}: closed form vs independent NumPy arc-cosine recursion "
          f"max rel err {err:.1e}, NTK diagonal vs (L+1)*2|x|^2/d rel err {err_diag:.1e} "
          f"(tolerance {_SELF_CHECK_TOL:.0e})")
    return 0 if ok else 1


# ----------------------------------------------------------------------------- parser
def build_parser():
    """The ``argparse`` parser of the ``infntk`` command."""
    p = _Parser(prog="infntk",
                description="Exact NNGP and NTK kernels of infinitely wide fully-connected "
                            "networks.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"infntk {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{kernel,sweep,demo}",
                           parser_class=_Parser)

    pk = sub.add_parser("kernel", help="compute NNGP/NTK Gram matrices of data files",
                        description="Compute the NNGP and NTK Gram matrices K(X, Y) "
                                    "(Y defaults to X).")
    pk.add_argument("X", help="input points, one row per point (.npy or .csv)")
    pk.add_argument("--y", metavar="Y", help="second set of points (.npy or .csv)")
    pk.add_argument("--out", required=True,
                    help="output .npz (arrays nngp, ntk) or .npy (memory-mapped, written block "
                         "by block; with --kernel both: OUT_nngp.npy and OUT_ntk.npy)")
    pk.add_argument("--kernel", choices=("both", "ntk", "nngp"), default="both")
    pk.add_argument("--block-rows", type=_positive("--block-rows"), default=256,
                    help="rows per block (default 256)")
    pk.add_argument("--force", action="store_true",
                    help="replace existing outputs (and discard an unfinished run of other "
                         "settings); inputs are never overwritten")
    pk.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_net_args(pk)
    pk.set_defaults(func=_cmd_kernel)

    ps = sub.add_parser("sweep", help="width-convergence study of finite networks",
                        description="Errors of empirical kernels of finite networks against "
                                    "the analytic ones over widths and seeds "
                                    "(infntk.convergence.width_sweep).")
    ps.add_argument("--widths", type=_widths, default=[64, 128, 256, 512, 1024],
                    help="comma-separated widths (default 64,128,256,512,1024)")
    ps.add_argument("--seeds", type=_positive("--seeds", 2), default=8,
                    help="networks per width, >= 2 (default 8)")
    ps.add_argument("--X", help="points (.npy/.csv); default: --n-points on the unit sphere")
    ps.add_argument("--n-points", type=_positive("--n-points"), default=8)
    ps.add_argument("--dim", type=_positive("--dim"), default=4)
    ps.add_argument("--out-csv", default="sweep.csv", help="table (default sweep.csv)")
    ps.add_argument("--out-png", default="sweep.png", help="plot (default sweep.png)")
    ps.add_argument("--checkpoint", metavar="FILE.json", default=None,
                    help="save the runs to FILE.json after each (width, seed) and resume "
                         "from it when it exists (same settings only)")
    ps.add_argument("--force", action="store_true", help="replace existing --out-csv/--out-png")
    ps.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_net_args(ps)
    ps.set_defaults(func=_cmd_sweep)

    pd = sub.add_parser("demo", help="kernels of a built-in data set, timing, self-check",
                        description="Print the NNGP and NTK of a bias-free ReLU network "
                                    "(w_std^2 = 2) on six built-in points, the time taken, "
                                    "and a self-check against an independent evaluation.")
    pd.add_argument("--depth", type=_positive("--depth", 0), default=3,
                    help="hidden layers (default 3)")
    pd.add_argument("--quiet", action="store_true", help="print only the self-check line")
    pd.set_defaults(func=_cmd_demo)

    pw = sub.add_parser("warmup", help="compile every code path once (fills the Numba cache)",
                        description="Run every engine once on tiny inputs so that later runs "
                                    "load compiled code from the cache; prints each path and "
                                    "its time (infntk._warmup.warmup).")

    def _cmd_warmup(args):
        _warmup.warmup(verbose=True)
        return 0
    pw.set_defaults(func=_cmd_warmup)
    sub.metavar = "{kernel,sweep,demo,warmup}"
    return p


def main(argv=None):
    """Run the command line; returns the exit status (0 ok, 1 self-check failed, 2 user error,
    130 interrupted by Ctrl-C).
    """
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help / --version
            return int(exc.code or 0)
        if args.command is None:
            parser.print_help()
            return 2
        return args.func(args)
    except UsageError as exc:
        print(f"infntk: error: {exc}", file=sys.stderr)
        return 2
    except _Interrupted as exc:
        print(f"infntk: interrupted: {exc}", file=sys.stderr)
        return 130
    except INTERRUPTS as exc:
        if not interrupted_by_user(exc):
            raise
        print("infntk: interrupted: no output written", file=sys.stderr)
        return 130
    except MemoryError as exc:
        print(f"infntk: error: {str(exc).splitlines()[0] if str(exc) else 'out of memory'}",
              file=sys.stderr)
        return 2
    except OverflowError as exc:  # the kernel overflows float64 for these parameters
        print(f"infntk: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"infntk: error: {exc.strerror or exc} ({exc.filename or ''})", file=sys.stderr)
        return 2
