"""Numerical verification of the infinite-width limit: empirical kernels versus FCNet.

* :func:`width_sweep` measures, for a grid of widths and seeds, the error of the empirical
  NTK and NNGP of :class:`infntk.empirical.MLP` (and of the per-layer kernels) against the
  analytic kernels of :class:`infntk.FCNet`; :class:`SweepResult` summarizes the errors
  (means with confidence intervals, quantiles, the error of the seed-averaged kernel) and fits
  the exponent of error versus width by log-log regression.
* :mod:`infntk.bounds` puts the measured errors next to the published bounds
  (:func:`~infntk.bounds.ntk_convergence_bound`, Arora et al. 2019a, Theorem 3.1;
  :func:`~infntk.bounds.uniform_convergence_bound`, the per-layer uniform bound), with the
  constants that would make them tight on the data. ``arora_bound`` and ``uniform_bound``
  here are deprecated aliases of those.
* :func:`depth_width_variance` measures the relative variance of ``Theta-hat(x, x)`` on a grid
  of depths and widths (Hanin & Nica 2019: it is governed by ``L / m``).

The expected picture: errors decay like ``m^(-1/2)`` (slope ``-1/2``), the bounds like
``m^(-1/4)`` and ``m^(-1/6)``, so their constants fitted at one width are loose at the next.

Example
-------
>>> from infntk.convergence import width_sweep
>>> res = width_sweep("relu", depth=1, widths=[64, 256], seeds=4, progress=False)
>>> fit = res.fit_exponent("ntk.relfro")
>>> bool(-1.5 < fit.slope < 0.5)
True
"""
from __future__ import annotations

import json
import math
import numbers
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from . import _io
from ._numba_config import INTERRUPTS, interrupted_by_user
from ._validation import (check_depth, check_matrix, check_parameterization, check_positive_int,
                          check_std, check_tol)
from .activations import get_activation
from .empirical import MLP
from .fcnet import FCNet
from .finite_width import corrections
from .network import Network

__all__ = ["width_sweep", "SweepResult", "ExponentFit", "depth_width_variance",
           "DepthWidthResult", "default_points", "correction_sweep", "CorrectionSweep"]


# ----------------------------------------------------------------------------- helpers
def default_points(n=8, d=4, seed=0):
    """``n`` points drawn uniformly on the unit sphere of ``R^d`` (a fixed test set).

    Returns
    -------
    ndarray, shape (n, d)
    """
    n = check_positive_int(n, "n")
    d = check_positive_int(d, "d")
    X = np.random.default_rng(seed).standard_normal((n, d))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _errors(emp, ref):
    diff = emp - ref
    ref_norm = np.linalg.norm(ref)
    return float(np.max(np.abs(diff))), float(np.linalg.norm(diff) / ref_norm) if ref_norm > 0 \
        else float(np.linalg.norm(diff))


def _t_quantile(p, dof):
    return float(stats.t.ppf(p, dof))


def _check_confidence(confidence):
    return check_tol(confidence, "confidence")


def _fcnet_reference(activation, w_std, b_std, parameterization):
    """``reference(depth, X, width) -> (Sigma, Theta)`` from :class:`infntk.FCNet`."""
    def ref(depth, X, width):
        net = FCNet(activation, depth=depth, w_std=w_std, b_std=b_std,
                    parameterization=parameterization,
                    width=width if parameterization == "standard" else None)
        k = net.kernels(X)
        return np.asarray(k.nngp, dtype=float), np.asarray(k.ntk, dtype=float)
    return ref


@dataclass(frozen=True)
class ExponentFit:
    """Least-squares fit ``log(error) = intercept + slope * log(width)`` over all runs.

    ``ci`` is the two-sided ``confidence`` interval of the slope (Student t with
    ``n_points - 2`` degrees of freedom); the runs are independent networks, so the residuals
    are independent, with a spread that is roughly constant on the log scale.
    """

    slope: float
    intercept: float
    stderr: float
    ci: tuple
    n_points: int
    metric: str
    confidence: float

    def __str__(self):
        return (f"{self.metric}: error ~ width^({self.slope:.3f} +- {self.stderr:.3f}), "
                f"{100 * self.confidence:.0f}% CI [{self.ci[0]:.3f}, {self.ci[1]:.3f}], "
                f"{self.n_points} runs")


@dataclass(repr=False)
class SweepResult:
    """Errors of empirical kernels against the analytic ones, per ``(width, seed)`` run.

    Attributes
    ----------
    config : dict
        The network (activation name and parameters, depth, w_std, b_std,
        parameterization), the points ``X`` (as a list) and ``units``.
    records : dict ``(width, seed) -> dict``
        ``records[w, s]["errors"][metric]`` with metrics ``"<kernel>.<norm>"``: kernel
        ``ntk``, ``nngp`` (the network's), ``sigma[l]``, ``theta[l]`` (``l = 1 .. L+1``, see
        :class:`infntk.empirical.LayerKernels`); norm ``maxabs`` (``max |K-hat - K|``) or
        ``relfro`` (``||K-hat - K||_F / ||K||_F``). ``records[w, s]["kernels"]`` keeps the
        empirical matrices, ``["seconds"]`` the run time.
    reference : dict ``width -> {kernel: array}``
        The analytic kernels (width-independent in ``"ntk"``; stored under every width).
    complete : bool
        False if the sweep was interrupted; pass the result back as ``results=`` to resume.
    """

    config: dict
    records: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    complete: bool = True

    def __repr__(self):
        """One line: the network, the widths, the number of runs (the data stay out of it)."""
        c = self.config
        X = c.get("X") or [[]]
        ws = self.widths
        wtxt = (f"[{', '.join(map(str, ws))}]" if len(ws) <= 6
                else f"[{ws[0]}, {ws[1]}, ..., {ws[-1]}] ({len(ws)} widths)")
        per = {}
        for (w, _) in self.records:
            per[w] = per.get(w, 0) + 1
        seeds = (str(next(iter(per.values()))) if len(set(per.values())) == 1
                 else f"{min(per.values())}..{max(per.values())}") if per else "0"
        return (f"SweepResult({c.get('activation')!r}, depth={c.get('depth')}, "
                f"w_std={c.get('w_std')}, b_std={c.get('b_std')}, "
                f"parameterization={c.get('parameterization')!r}, widths={wtxt}, "
                f"seeds per width={seeds}, runs={len(self.records)}, "
                f"points={len(X)}x{len(X[0])}, complete={self.complete})")

    # ---------------------------------------------------------------- access
    @property
    def widths(self):
        """Sorted widths with at least one run."""
        return sorted({w for (w, _) in self.records})

    @property
    def metrics(self):
        """Names of the recorded error metrics."""
        for rec in self.records.values():
            return sorted(rec["errors"])
        return []

    def errors(self, metric="ntk.relfro"):
        """``{width: array of the metric over seeds}``."""
        if self.records and metric not in self.metrics:
            raise ValueError(f"metric must be one of {self.metrics}, got {metric!r}.")
        out = {}
        for (w, s) in sorted(self.records):
            out.setdefault(w, []).append(self.records[w, s]["errors"][metric])
        return {w: np.asarray(v) for w, v in out.items()}

    def summary(self, metric="ntk.relfro", confidence=0.95, quantile=None):
        """Per width: mean, standard deviation, t confidence interval of the mean, median.

        Parameters
        ----------
        metric : str
        confidence : float
            Level of the two-sided interval ``mean +- t_{S-1} sd / sqrt(S)`` (S seeds).
        quantile : float, optional
            Also report this empirical quantile over seeds (e.g. ``1 - delta``).

        Returns
        -------
        dict of ndarray
            ``width, n, mean, std, ci_low, ci_high, median`` (and ``quantile``), one entry per
            width.
        """
        confidence = _check_confidence(confidence)
        rows = {k: [] for k in ("width", "n", "mean", "std", "ci_low", "ci_high", "median")}
        if quantile is not None:
            rows["quantile"] = []
        for w, e in self.errors(metric).items():
            S = e.size
            mean = float(e.mean())
            sd = float(e.std(ddof=1)) if S > 1 else float("nan")
            half = _t_quantile(0.5 + confidence / 2, S - 1) * sd / math.sqrt(S) if S > 1 \
                else float("nan")
            for k, v in (("width", w), ("n", S), ("mean", mean), ("std", sd),
                         ("ci_low", mean - half), ("ci_high", mean + half),
                         ("median", float(np.median(e)))):
                rows[k].append(v)
            if quantile is not None:
                rows["quantile"].append(float(np.quantile(e, quantile)))
        return {k: np.asarray(v) for k, v in rows.items()}

    def mean_kernel(self, kernel="ntk", width=None):
        """The seed average of an empirical kernel: ``{width: (n, n) array}`` or one array."""
        out = {}
        for (w, s) in sorted(self.records):
            out.setdefault(w, []).append(self.records[w, s]["kernels"][kernel])
        out = {w: np.mean(v, axis=0) for w, v in out.items()}
        return out if width is None else out[width]

    def mean_kernel_error(self, kernel="ntk", norm="relfro"):
        """Error of the seed-averaged kernel against the analytic one, per width.

        Averaging over ``S`` seeds divides the fluctuation (order ``m^(-1/2)``) by
        ``sqrt(S)`` and leaves the bias ``E[K-hat] - K`` (order ``1/m``).

        Returns
        -------
        dict ``width -> float``
        """
        if norm not in ("maxabs", "relfro"):
            raise ValueError(f"norm must be 'maxabs' or 'relfro', got {norm!r}.")
        means = self.mean_kernel(kernel)
        return {w: _errors(K, self.reference[w][kernel])[0 if norm == "maxabs" else 1]
                for w, K in means.items()}

    def fit_exponent(self, metric="ntk.relfro", confidence=0.95, min_width=None):
        """Fit ``error ~ C width^slope`` by least squares on ``log`` error of every run.

        Parameters
        ----------
        metric : str
        confidence : float
        min_width : int, optional
            Ignore smaller widths (where ``1/m`` corrections may still matter).

        Returns
        -------
        ExponentFit
        """
        confidence = _check_confidence(confidence)
        xs, ys = [], []
        for w, e in self.errors(metric).items():
            if min_width is not None and w < min_width:
                continue
            e = e[e > 0]
            xs.extend([math.log(w)] * e.size)
            ys.extend(np.log(e))
        x, y = np.asarray(xs), np.asarray(ys)
        if len(set(xs)) < 2 or x.size < 3:
            raise ValueError(f"fit_exponent needs nonzero errors at >= 2 widths and >= 3 runs "
                             f"for {metric!r}, got {x.size} runs.")
        xm, ym = x.mean(), y.mean()
        sxx = float(((x - xm) ** 2).sum())
        slope = float(((x - xm) * (y - ym)).sum() / sxx)
        intercept = float(ym - slope * xm)
        resid = y - intercept - slope * x
        dof = x.size - 2
        s2 = float((resid ** 2).sum() / dof) if dof > 0 else float("nan")
        stderr = math.sqrt(s2 / sxx)
        half = _t_quantile(0.5 + confidence / 2, dof) * stderr
        return ExponentFit(slope=slope, intercept=intercept, stderr=stderr,
                           ci=(slope - half, slope + half), n_points=int(x.size),
                           metric=metric, confidence=confidence)

    # ---------------------------------------------------------------- persistence
    def save(self, path, overwrite=False):
        """Write the result to a JSON file (resumable with ``width_sweep(results=load(...))``).

        The file appears only when complete (temporary file, fsync, ``os.replace``); an
        existing ``path`` is replaced only with ``overwrite=True``.
        """
        def enc(a):
            return np.asarray(a).tolist()
        data = {"config": self.config, "complete": self.complete,
                "records": [{"width": w, "seed": s, "errors": r["errors"],
                             "seconds": r["seconds"],
                             "kernels": {k: enc(v) for k, v in r["kernels"].items()}}
                            for (w, s), r in self.records.items()],
                "reference": {str(w): {k: enc(v) for k, v in ref.items()}
                              for w, ref in self.reference.items()}}
        with _io.atomic_open(path, "w", overwrite=overwrite) as fh:
            json.dump(data, fh)

    @classmethod
    def load(cls, path):
        """Read a result written by :meth:`save`."""
        with open(path) as fh:
            data = json.load(fh)
        records = {(r["width"], r["seed"]): {"errors": r["errors"], "seconds": r["seconds"],
                                             "kernels": {k: np.asarray(v) for k, v in
                                                         r["kernels"].items()}}
                   for r in data["records"]}
        reference = {int(w): {k: np.asarray(v) for k, v in ref.items()}
                     for w, ref in data["reference"].items()}
        return cls(config=data["config"], records=records, reference=reference,
                   complete=data["complete"])


# ----------------------------------------------------------------------------- the sweep
def _seed_list(seeds):
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        return list(range(check_positive_int(seeds, "seeds")))
    try:
        items = list(seeds)
    except TypeError:
        raise TypeError(f"seeds must be a count or an iterable of ints, got {seeds!r}.") from None
    if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in items):
        raise TypeError(f"seeds must be a count or an iterable of ints (not truncated floats), "
                        f"got {seeds!r}.")
    out = [int(v) for v in items]
    if not out or any(s < 0 for s in out):
        raise ValueError(f"seeds must be non-empty non-negative ints, got {seeds!r}.")
    return out


def _width_list(widths):
    try:
        out = [check_positive_int(w, "widths") for w in widths]
    except TypeError as exc:
        raise TypeError(f"widths must be an iterable of positive ints ({exc}).") from None
    if not out:
        raise ValueError("widths must be non-empty.")
    return sorted(set(out))


def _progress(total, enabled, desc):
    if not enabled:
        return None
    return tqdm(total=total, desc=desc)


def width_sweep(activation="relu", depth=2, w_std=1.0, b_std=0.0, parameterization="ntk", *,
                widths=tuple(2 ** k for k in range(6, 14)), seeds=8, X=None, data=None, units=1,
                dtype=np.float64, results=None, progress=True, reference=None,
                checkpoint=None, **activation_params):
    """Errors of the empirical kernels of finite networks against FCNet, over widths and seeds.

    For each width ``m`` and seed ``s`` an independent :class:`~infntk.empirical.MLP` is drawn
    (generator seeded with ``[s, m]``) and its NTK, NNGP and per-layer kernels ``sigma[l]``,
    ``theta[l]`` on the points ``X`` are compared with the analytic ``Sigma^l``, ``Theta^l``
    (``FCNet(depth=l-1)``; in ``"standard"`` at the same width ``m``).

    Parameters
    ----------
    activation, depth, w_std, b_std, parameterization
        The network, as in :class:`infntk.FCNet` and :class:`~infntk.empirical.MLP` (same
        names and order); the remaining arguments are keyword-only. ``activation`` may also be
        an :class:`infntk.Network` (then ``depth`` to ``parameterization``, ``units`` and
        ``reference`` are not used): its finite versions ``net.finite(m, seed=[s, m])`` are
        compared with ``Network(net.layers, width=m).kernels``, on the metrics ``ntk.*`` and
        ``nngp.*`` only (no per-layer kernels).
    widths : iterable of int
        Default ``2^6 .. 2^13``.
    seeds : int or iterable of int
        A count (seeds ``0 .. seeds-1``) or explicit seeds.
    X : array_like, shape (n, d), optional
        Default :func:`default_points` (8 points on the unit sphere of ``R^4``).
    data : callable, optional
        A sampler ``data(n, d, seed) -> X`` (e.g. ``infntk.data.sampler("student_t")``) that
        replaces the default points by ``data(8, 4, 0)``; give ``X`` instead for other sizes.
    dtype, **activation_params
        As in :class:`~infntk.empirical.MLP`.
    units : int
        Units averaged in the hidden layers' ``theta[l]`` (see ``MLP.layer_kernels``).
    results : SweepResult, optional
        A previous (possibly interrupted) result with the same configuration: its runs are
        kept and only the missing ones computed.
    progress : bool
        Show a tqdm progress bar.
    reference : callable, optional
        ``reference(depth, X, width) -> (Sigma, Theta)``, the analytic NNGP and NTK of the
        network with ``depth`` hidden layers; default :class:`infntk.FCNet`.
    checkpoint : path, optional
        A JSON file (:meth:`SweepResult.save`) rewritten atomically after each
        ``(width, seed)`` run. If it exists, its runs are loaded first (the configuration must
        match, else ``ValueError``), so a killed sweep resumes where it stopped.

    Returns
    -------
    SweepResult
        ``complete`` is False if interrupted (``KeyboardInterrupt``): the runs done so far are
        kept; call again with ``results=`` to resume.

    Notes
    -----
    Cost per run: ``O(n L m^2)`` for the forward/backward passes plus the draw of about
    ``(L - 1) m^2`` Gaussians, which dominates for small ``n`` (16.8 million at ``m = 4096``,
    ``L = 2``: 0.3 to 1.5 s on 2 shared cores). ``m = 8192``, ``L = 3`` needs about 1.1 GB
    for the weights.
    """
    if isinstance(activation, Network):
        return _network_sweep(activation, _width_list(widths), _seed_list(seeds),
                              default_points() if X is None else check_matrix(X, "X"), dtype,
                              results, progress)
    depth = check_depth(depth)
    act = get_activation(activation, **activation_params)
    w_std = check_std(w_std, "w_std")
    b_std = check_std(b_std, "b_std", allow_none=True)
    parameterization = check_parameterization(parameterization)
    widths = _width_list(widths)
    seeds = _seed_list(seeds)
    units = check_positive_int(units, "units")
    if data is not None and (X is not None or not callable(data)):
        raise TypeError("data must be a sampler (n, d, seed) -> X, and cannot be given with X.")
    X = default_points() if X is None and data is None else check_matrix(
        data(8, 4, 0) if X is None else X, "X")
    config = {"activation": act.name, "activation_params": {k: v for k, v in act.params.items()
                                                            if k != "callable"},
              "depth": depth, "w_std": w_std, "b_std": b_std,
              "parameterization": parameterization, "units": units, "X": X.tolist(),
              "dtype": np.dtype(dtype).name}
    if checkpoint is not None and results is None and os.path.exists(checkpoint):
        results = SweepResult.load(checkpoint)
        if results.config != config:
            diff = sorted(k for k in config if results.config.get(k) != config.get(k))
            raise ValueError(f"checkpoint {checkpoint!r} was written by a sweep with another "
                             f"configuration ({diff}); use another path or the same arguments.")
    elif checkpoint is not None:
        _io.check_output_path(checkpoint, overwrite=True, name="checkpoint")
    if results is None:
        results = SweepResult(config=config)
    else:
        if not isinstance(results, SweepResult):
            raise TypeError(f"results must be a SweepResult, got {type(results).__name__}.")
        if results.config != config:
            diff = sorted(k for k in config if results.config.get(k) != config.get(k))
            raise ValueError(f"results: configuration differs from this sweep in {diff}; "
                             "resume with the same arguments.")
    if reference is None:
        reference = _fcnet_reference(act, w_std, b_std, parameterization)
    L = depth
    jobs = [(w, s) for w in widths for s in seeds if (w, s) not in results.records]
    bar = _progress(len(jobs), progress, f"width sweep ({act.name}, L={L})")
    results.complete = False
    try:
        for (w, s) in jobs:
            if w not in results.reference:
                ref = {}
                for l in range(1, L + 2):
                    sig, th = reference(l - 1, X, w)
                    ref[f"sigma[{l}]"], ref[f"theta[{l}]"] = sig, th
                ref["nngp"], ref["ntk"] = ref[f"sigma[{L + 1}]"], ref[f"theta[{L + 1}]"]
                results.reference[w] = ref
            ref = results.reference[w]
            t0 = time.perf_counter()
            mlp = MLP(w, L, act, w_std=w_std, b_std=b_std, parameterization=parameterization,
                      seed=[s, w], dtype=dtype, input_dim=X.shape[1])
            lk = mlp.layer_kernels(X, units=units)
            kernels = {}
            for l in range(1, L + 2):
                kernels[f"sigma[{l}]"] = np.asarray(lk.sigma[l], dtype=float)
                kernels[f"theta[{l}]"] = np.asarray(lk.theta[l], dtype=float)
            kernels["nngp"], kernels["ntk"] = kernels[f"sigma[{L + 1}]"], kernels[f"theta[{L + 1}]"]
            errors = {}
            for name, K in kernels.items():
                errors[f"{name}.maxabs"], errors[f"{name}.relfro"] = _errors(K, ref[name])
            results.records[w, s] = {"errors": errors, "kernels": kernels,
                                     "seconds": time.perf_counter() - t0}
            if checkpoint is not None:
                results.save(checkpoint, overwrite=True)
            del mlp
            if bar is not None:
                bar.update(1)
        results.complete = True
        if checkpoint is not None:
            results.save(checkpoint, overwrite=True)
    except INTERRUPTS as exc:
        if not interrupted_by_user(exc):
            raise
        warnings.warn(f"width_sweep interrupted after {len(results.records)} runs; pass the "
                      "returned result as results= to resume.", RuntimeWarning, stacklevel=2)
    finally:
        if bar is not None:
            bar.close()
    return results


def _network_sweep(net, widths, seeds, X, dtype, results, progress):
    """:func:`width_sweep` for an :class:`infntk.Network` (arguments already checked)."""
    config = {"activation": repr(net), "network": repr(net), "depth": None,
              "parameterization": None, "X": X.tolist(), "dtype": np.dtype(dtype).name}
    if results is None:
        results = SweepResult(config=config)
    elif not isinstance(results, SweepResult) or results.config != config:
        raise ValueError("results: not a SweepResult of this network and points; resume with "
                         "the same arguments.")
    jobs = [(w, s) for w in widths for s in seeds if (w, s) not in results.records]
    bar = _progress(len(jobs), progress, "width sweep (network)")
    results.complete = False
    try:
        for (w, s) in jobs:
            if w not in results.reference:
                k = Network(net.layers, width=w, tol=net.tol).kernels(X)
                results.reference[w] = {"nngp": np.asarray(k.nngp, dtype=float),
                                        "ntk": np.asarray(k.ntk, dtype=float)}
            t0 = time.perf_counter()
            fin = net.finite(w, seed=[s, w], dtype=dtype, input_dim=X.shape[1])
            kernels = {"nngp": np.asarray(fin.nngp(X), dtype=float),
                       "ntk": np.asarray(fin.ntk(X), dtype=float)}
            errors = {}
            for name, K in kernels.items():
                errors[f"{name}.maxabs"], errors[f"{name}.relfro"] = \
                    _errors(K, results.reference[w][name])
            results.records[w, s] = {"errors": errors, "kernels": kernels,
                                     "seconds": time.perf_counter() - t0}
            if bar is not None:
                bar.update(1)
        results.complete = True
    except INTERRUPTS as exc:
        if not interrupted_by_user(exc):
            raise
        warnings.warn(f"width_sweep interrupted after {len(results.records)} runs; pass the "
                      "returned result as results= to resume.", RuntimeWarning, stacklevel=3)
    finally:
        if bar is not None:
            bar.close()
    return results


# ----------------------------------------------------------------------------- depth vs width
@dataclass(repr=False)
class DepthWidthResult:
    """Moments of ``Theta-hat(x, x)`` over seeds on a grid of depths and widths.

    Arrays are indexed ``[i, j]`` for ``depths[i]``, ``widths[j]``. ``rel_var`` is
    ``Var / mean^2`` (unbiased variance), with a ``confidence`` interval ``rel_var_ci`` from
    the chi-square distribution of the sample variance (Gaussian approximation; the
    fluctuations are not Gaussian at large ``L/m``, so read it as indicative). ``ratio`` is
    ``L / m``; ``fit_c`` fits ``log(1 + rel_var) = c L / m`` by least squares through 0, the
    form of Hanin & Nica (2019).
    """

    depths: np.ndarray
    widths: np.ndarray
    seeds: int
    mean: np.ndarray
    var: np.ndarray
    rel_var: np.ndarray
    rel_var_ci: tuple
    ratio: np.ndarray
    fit_c: float
    config: dict

    @property
    def n_seeds(self):
        """Deprecated name of :attr:`seeds` (the number of networks per grid point)."""
        warnings.warn("DepthWidthResult.n_seeds is deprecated; use .seeds.", DeprecationWarning,
                      stacklevel=2)
        return self.seeds

    def __repr__(self):
        return (f"DepthWidthResult({self.config.get('activation')!r}, "
                f"depths={self.depths.tolist()}, widths={self.widths.tolist()}, "
                f"seeds={self.seeds}, fit_c={self.fit_c:.4g})")


def depth_width_variance(activation="relu", w_std=None, b_std=None, parameterization="ntk", *,
                         depths=(1, 2, 4, 8), widths=(16, 32, 64, 128), seeds=64, x=None,
                         confidence=0.95, progress=True, n_seeds=None, **activation_params):
    """Relative variance of the diagonal empirical NTK ``Theta-hat(x, x)`` over an ``(L, m)`` grid.

    Hanin & Nica (2019) show that for ReLU networks the fluctuations of the NTK at
    initialization are governed by ``L / m`` rather than by ``1 / m`` alone: with depth and
    width growing together the NTK stays random, ``E[Theta-hat^2] / E[Theta-hat]^2`` being
    ``exp(5 beta)``, ``beta = sum_l 1/n_l = L/m``, up to multiplicative constants and
    corrections (their Theorem 1, for their initialization with biases). The fitted
    ``fit_c`` of ``log(1 + rel_var) = c L / m`` is therefore comparable with 5 only
    roughly; the robust statement tested here is that ``rel_var`` is a function increasing
    in ``L / m``.

    Parameters
    ----------
    activation : str, callable or Activation
    w_std, b_std : float
        Default ``w_std = sqrt(2)`` (variance preserving for ReLU), no biases.
    parameterization : {"ntk", "standard"}
    depths, widths : iterables of int
        Keyword-only, like everything below.
    seeds : int or iterable of int
        Independent networks per grid point: a count ``S >= 2`` (seeds ``0 .. S-1``) or
        explicit seeds, as in :func:`width_sweep`; the network of seed ``s`` at ``(L, m)`` is
        drawn with the generator seed ``[s, L, m]``.
    x : array_like, shape (1, d) or (d,), optional
        The input; default the first of :func:`default_points`.
    confidence : float
    progress : bool
    n_seeds : int, optional
        Deprecated name of ``seeds`` (a count).

    Returns
    -------
    DepthWidthResult

    References
    ----------
    B. Hanin, M. Nica, "Finite depth and width corrections to the neural tangent kernel",
    ICLR 2020, arXiv:1909.05989.
    """
    act = get_activation(activation, **activation_params)
    depths = np.asarray(sorted({check_positive_int(L, "depths") for L in depths}))
    widths = np.asarray(_width_list(widths))
    if n_seeds is not None:
        warnings.warn("depth_width_variance(n_seeds=...) is deprecated; use seeds=.",
                      DeprecationWarning, stacklevel=2)
        seeds = check_positive_int(n_seeds, "n_seeds", minimum=2)
    seed_list = _seed_list(seeds)
    if len(seed_list) < 2:
        raise ValueError(f"seeds must give at least 2 networks (a variance is estimated), got "
                         f"{seeds!r}.")
    n_seeds = len(seed_list)
    confidence = _check_confidence(confidence)
    w_std = math.sqrt(2.0) if w_std is None else check_std(w_std, "w_std")
    b_std = check_std(b_std, "b_std", allow_none=True)
    if x is None:
        x = default_points()[:1]
    x = np.asarray(x)
    x = check_matrix(x.reshape(1, -1) if x.ndim == 1 else x, "x")
    if x.shape[0] != 1:
        raise ValueError(f"x must be a single point, shape (d,) or (1, d), got {x.shape}.")
    vals = np.empty((depths.size, widths.size, n_seeds))
    bar = _progress(vals.size, progress, "depth x width")
    try:
        for i, L in enumerate(depths):
            for j, m in enumerate(widths):
                for k, s in enumerate(seed_list):
                    mlp = MLP(int(m), int(L), act, w_std=w_std, b_std=b_std,
                              parameterization=parameterization, seed=[s, int(L), int(m)],
                              input_dim=x.shape[1])
                    vals[i, j, k] = mlp.ntk(x)[0, 0]
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    mean = vals.mean(axis=2)
    var = vals.var(axis=2, ddof=1)
    rel = var / mean ** 2
    dof = n_seeds - 1
    lo = rel * dof / stats.chi2.ppf(0.5 + confidence / 2, dof)
    hi = rel * dof / stats.chi2.ppf(0.5 - confidence / 2, dof)
    ratio = depths[:, None] / widths[None, :]
    y = np.log1p(rel).ravel()
    r = ratio.ravel()
    fit_c = float((r * y).sum() / (r * r).sum())
    config = {"activation": act.name, "w_std": w_std, "b_std": b_std,
              "parameterization": parameterization, "x": x.tolist()}
    return DepthWidthResult(depths=depths, widths=widths, seeds=n_seeds, mean=mean, var=var,
                            rel_var=rel, rel_var_ci=(lo, hi), ratio=ratio, fit_c=fit_c,
                            config=config)


# ----------------------------------------------------------------------------- deprecated names
# The theorem bounds moved to infntk.bounds (which imports this module, so it cannot be
# imported here): the former names load it lazily, warn, and return the former dicts.
_MOVED = {"arora_bound": "_legacy_convergence_arora_bound",
          "uniform_bound": "_legacy_convergence_uniform_bound"}


def __getattr__(name):
    if name in _MOVED:
        import importlib
        return getattr(importlib.import_module(".bounds", __package__), _MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- 1/width corrections
@dataclass(frozen=True)
class CorrectionSweep:
    """Measured ``width * bias`` and ``width * Var`` of the empirical kernels, with predictions.

    Every array is ``(len(widths), n, n)``; ``*_se`` are Monte Carlo standard errors (the bias
    from the seeds' sample standard deviation; the variance from the sample fourth moment).
    ``predicted_*`` are :func:`infntk.finite_width.corrections` at each width.
    """

    widths: tuple
    seeds: int
    nngp: np.ndarray                 # (n, n) infinite-width kernels
    ntk: np.ndarray
    nngp_bias: np.ndarray
    nngp_bias_se: np.ndarray
    nngp_var: np.ndarray
    nngp_var_se: np.ndarray
    ntk_bias: np.ndarray
    ntk_bias_se: np.ndarray
    ntk_var: np.ndarray
    ntk_var_se: np.ndarray
    predicted_nngp_bias: np.ndarray
    predicted_nngp_var: np.ndarray
    predicted_ntk_bias: np.ndarray
    predicted_ntk_var: np.ndarray

    def __repr__(self):
        return (f"CorrectionSweep(widths={self.widths}, seeds={self.seeds}, "
                f"n={self.nngp.shape[0]})")

    def z_scores(self, name):
        """``(measured - predicted) / se`` of ``name`` in ``nngp_bias, nngp_var, ntk_bias,
        ntk_var``, ``(len(widths), n, n)`` (0 where the standard error vanishes)."""
        if name not in ("nngp_bias", "nngp_var", "ntk_bias", "ntk_var"):
            raise ValueError(f"name must be one of nngp_bias, nngp_var, ntk_bias, ntk_var, "
                             f"got {name!r}.")
        m, se = getattr(self, name), getattr(self, name + "_se")
        p = getattr(self, "predicted_" + name)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(se > 0, (m - p) / se, 0.0)

    def plot(self, entry=(0, 0), ax=None):
        """Measured (with 95% intervals) vs predicted coefficients against width (matplotlib)."""
        import matplotlib.pyplot as plt
        if ax is None:
            _, ax = plt.subplots(figsize=(5.5, 4))
        i, j = entry
        w = np.asarray(self.widths, dtype=float)
        for name, color in (("nngp_var", "C0"), ("ntk_var", "C1"), ("nngp_bias", "C2"),
                            ("ntk_bias", "C3")):
            m = getattr(self, name)[:, i, j]
            se = getattr(self, name + "_se")[:, i, j]
            ax.errorbar(w, m, yerr=1.96 * se, fmt="o", color=color, capsize=3,
                        label=f"{name} (measured, 95%)")
            ax.plot(w, getattr(self, "predicted_" + name)[:, i, j], "--", color=color,
                    label=f"{name} (predicted)")
        ax.set_xscale("log")
        ax.set_xlabel("width")
        ax.set_ylabel(f"width x correction, entry {entry}")
        ax.legend(fontsize=7)
        return ax


def correction_sweep(net, X, widths, seeds=200, progress=False):
    """Measure the ``1/width`` corrections by Monte Carlo and put the predictions beside them.

    For every width, ``seeds`` finite networks ``net.finite(width, seed)`` give the empirical
    NNGP (of the last hidden layer, as :meth:`infntk.empirical.MLP.nngp`) and NTK at the rows of
    ``X``; their mean minus the analytic kernel, and their variance, are scaled by the width
    and compared with :func:`infntk.finite_width.corrections` (Roberts, Yaida and Hanin, ch. 4
    and 8). As the width grows the measured coefficients approach the predicted ones (the
    next order is ``O(1/width)``).

    Parameters
    ----------
    net : infntk.FCNet or infntk.Network (fully connected)
    X : (n, d) array, n <= 64
    widths : sequence of int
    seeds : int, >= 2
    progress : bool

    Returns
    -------
    CorrectionSweep

    Notes
    -----
    Cost: ``len(widths) * seeds`` finite networks and their kernels,
    ``O(seeds * n * depth * width^2)`` per width.
    """
    if not hasattr(net, "finite"):
        raise TypeError(f"net must be an infntk.FCNet or Network, got {type(net).__name__}.")
    X = check_matrix(X, "X")
    widths = tuple(check_positive_int(w, "widths") for w in widths)
    if not widths:
        raise ValueError("widths must be a non-empty sequence of integers >= 1.")
    seeds = check_positive_int(seeds, "seeds", minimum=2)
    k = net.kernels(X)
    out = {name: [] for name in ("nngp_bias", "nngp_bias_se", "nngp_var", "nngp_var_se",
                                 "ntk_bias", "ntk_bias_se", "ntk_var", "ntk_var_se",
                                 "predicted_nngp_bias", "predicted_nngp_var",
                                 "predicted_ntk_bias", "predicted_ntk_var")}
    for width in tqdm(widths, disable=not progress, desc="widths"):
        samples = {"nngp": [], "ntk": []}
        for seed in range(seeds):
            fin = net.finite(width, seed=seed)
            samples["nngp"].append(fin.nngp(X))
            samples["ntk"].append(fin.ntk(X))
        pred = corrections(net, X, width)
        for kind, ref in (("nngp", k.nngp), ("ntk", k.ntk)):
            S = np.stack(samples[kind])                  # (seeds, n, n)
            mean = S.mean(axis=0)
            dev = S - mean
            var = (dev ** 2).sum(axis=0) / (seeds - 1)
            m4 = (dev ** 4).mean(axis=0)
            out[f"{kind}_bias"].append(width * (mean - ref))
            out[f"{kind}_bias_se"].append(width * np.sqrt(var / seeds))
            out[f"{kind}_var"].append(width * var)
            # standard error of the sample variance from the fourth central moment
            out[f"{kind}_var_se"].append(width * np.sqrt(np.maximum(m4 - var ** 2, 0.0) / seeds))
            out[f"predicted_{kind}_bias"].append(getattr(pred, f"{kind}_bias"))
            out[f"predicted_{kind}_var"].append(getattr(pred, f"{kind}_var"))
    return CorrectionSweep(widths, seeds, k.nngp, k.ntk,
                           **{name: np.stack(v) for name, v in out.items()})
