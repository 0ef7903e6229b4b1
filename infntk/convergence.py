"""Numerical verification of the infinite-width limit: empirical kernels versus FCNet.

* :func:`width_sweep` measures, for a grid of widths and seeds, the error of the empirical
  NTK and NNGP of :class:`infntk.empirical.MLP` (and of the per-layer kernels) against the
  analytic kernels of :class:`infntk.FCNet`; :class:`SweepResult` summarizes the errors
  (means with confidence intervals, quantiles, the error of the seed-averaged kernel) and fits
  the exponent of error versus width by log-log regression.
* :func:`arora_bound` and :func:`uniform_bound` put the measured errors next to the published
  bounds (Arora et al. 2019; the per-layer uniform bound quoted in the project's source
  document), with the constants that would make them tight on the data.
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
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ._validation import check_depth, check_matrix, check_positive_int, check_std
from .activations import get_activation
from .empirical import MLP

__all__ = ["width_sweep", "SweepResult", "ExponentFit", "arora_bound", "uniform_bound",
           "depth_width_variance", "DepthWidthResult", "default_points"]


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
    from scipy import stats
    return float(stats.t.ppf(p, dof))


def _check_confidence(confidence):
    if not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}.")
    return float(confidence)


def _fcnet_reference(activation, w_std, b_std, parameterization):
    """``reference(depth, X, width) -> (Sigma, Theta)`` from :class:`infntk.FCNet`."""
    def ref(depth, X, width):
        from .fcnet import FCNet
        net = FCNet(activation, depth=depth, w_std=w_std, b_std=b_std,
                    parameterization=parameterization,
                    width=width if parameterization == "standard" else None)
        k = net.kernels(X)
        return np.asarray(k.nngp, dtype=float), np.asarray(k.ntk, dtype=float)
    return ref


@dataclass
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


@dataclass
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
    def save(self, path):
        """Write the result to a JSON file (resumable with ``width_sweep(results=load(...))``)."""
        def enc(a):
            return np.asarray(a).tolist()
        data = {"config": self.config, "complete": self.complete,
                "records": [{"width": w, "seed": s, "errors": r["errors"],
                             "seconds": r["seconds"],
                             "kernels": {k: enc(v) for k, v in r["kernels"].items()}}
                            for (w, s), r in self.records.items()],
                "reference": {str(w): {k: enc(v) for k, v in ref.items()}
                              for w, ref in self.reference.items()}}
        with open(path, "w") as fh:
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
        out = [int(s) for s in seeds]
    except TypeError:
        raise TypeError(f"seeds must be a count or an iterable of ints, got {seeds!r}.") from None
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
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc)


def width_sweep(activation="relu", depth=2, widths=tuple(2 ** k for k in range(6, 14)), seeds=8,
                X=None, w_std=1.0, b_std=0.0, parameterization="ntk", units=1,
                dtype=np.float64, results=None, progress=True, reference=None,
                **activation_params):
    """Errors of the empirical kernels of finite networks against FCNet, over widths and seeds.

    For each width ``m`` and seed ``s`` an independent :class:`~infntk.empirical.MLP` is drawn
    (generator seeded with ``[s, m]``) and its NTK, NNGP and per-layer kernels ``sigma[l]``,
    ``theta[l]`` on the points ``X`` are compared with the analytic ``Sigma^l``, ``Theta^l``
    (``FCNet(depth=l-1)``; in ``"standard"`` at the same width ``m``).

    Parameters
    ----------
    activation : str, callable or Activation
    depth : int
    widths : iterable of int
        Default ``2^6 .. 2^13``.
    seeds : int or iterable of int
        A count (seeds ``0 .. seeds-1``) or explicit seeds.
    X : array_like, shape (n, d), optional
        Default :func:`default_points` (8 points on the unit sphere of ``R^4``).
    w_std, b_std, parameterization, dtype, **activation_params
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
    depth = check_depth(depth)
    act = get_activation(activation, **activation_params)
    w_std = check_std(w_std, "w_std")
    b_std = check_std(b_std, "b_std", allow_none=True)
    if parameterization not in ("ntk", "standard"):
        raise ValueError(f"parameterization must be 'ntk' or 'standard', got {parameterization!r}.")
    widths = _width_list(widths)
    seeds = _seed_list(seeds)
    units = check_positive_int(units, "units")
    X = default_points() if X is None else check_matrix(X, "X")
    config = {"activation": act.name, "activation_params": {k: v for k, v in act.params.items()
                                                            if k != "callable"},
              "depth": depth, "w_std": w_std, "b_std": b_std,
              "parameterization": parameterization, "units": units, "X": X.tolist(),
              "dtype": np.dtype(dtype).name}
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
            del mlp
            if bar is not None:
                bar.update(1)
        results.complete = True
    except KeyboardInterrupt:
        warnings.warn(f"width_sweep interrupted after {len(results.records)} runs; pass the "
                      "returned result as results= to resume.", RuntimeWarning, stacklevel=2)
    finally:
        if bar is not None:
            bar.close()
    return results


# ----------------------------------------------------------------------------- bounds
def _pairwise_errors(result, width, kernel):
    ref = result.reference[width][kernel]
    return [np.abs(result.records[width, s]["kernels"][kernel] - ref)
            for (w, s) in sorted(result.records) if w == width]


def arora_bound(result, delta=0.1, C=1.0):
    """The bound of Arora et al. (2019) next to the measured errors of a ReLU width sweep.

    Theorem (as quoted in the project's source document 001): for ReLU, no biases, inputs
    with ``||x|| <= 1`` and width ``m >= C L^6 log(L/delta) / eps^4``, with probability
    ``>= 1 - delta`` the empirical NTK is within ``(L+1) eps`` of the analytic one, i.e.

    .. math:: |\\hat\\Theta(x, x') - \\Theta(x, x')| \\le (L + 1)\\,\\epsilon(m), \\qquad
              \\epsilon(m) = (C L^6 \\log(L/\\delta) / m)^{1/4}.

    ``C`` is an unspecified absolute constant. This function reports, per width, the
    measured ``(1 - delta)``-quantile over seeds of the largest error over all pairs of
    points (a uniform, hence conservative, version of the per-pair statement) divided by
    ``L + 1`` (``eps_measured``), the bound's ``eps(m)`` for the given ``C``, and the constant
    ``C_tight = m eps_measured^4 / (L^6 log(L/delta))`` that makes the bound an equality.

    Arora et al. normalize differently (first layer ``W x`` without ``1/sqrt(d)``, hidden
    layers with ``c_sigma = 2``): errors are converted exactly to their normalization and to
    unit-norm inputs using the positive homogeneity of the ReLU network
    (``Theta-hat(c x, y) = c Theta-hat(x, y)``, and a factor ``(2 / w_std^2)^(L+1)``), so any
    ``w_std > 0`` and any nonzero inputs may be used.

    Parameters
    ----------
    result : SweepResult
        From :func:`width_sweep` with ``activation="relu"``, ``parameterization="ntk"``,
        ``depth >= 1`` and no biases (``b_std`` None or 0).
    delta : float in (0, 1)
    C : float
        The constant of the theorem to evaluate ``eps(m)`` with.

    Returns
    -------
    dict
        ``width, eps_measured, eps_bound, ratio (= eps_bound / eps_measured), C_tight``
        (arrays over widths), ``C_cover`` (the smallest ``C`` for which the bound covers every
        width: ``max C_tight``), ``n_seeds`` and ``L``.

    Notes
    -----
    The quantile of ``S`` seeds is a noisy estimate when ``S`` is not much larger than
    ``1/delta``. Since the measured errors decay like ``m^(-1/2)`` and ``eps(m)`` like
    ``m^(-1/4)``, ``C_tight`` falls like ``1/m``: a ``C`` fitted at one width is loose by
    ``(m'/m)^(1/4)`` at width ``m'``.

    References
    ----------
    S. Arora, S. S. Du, W. Hu, Z. Li, R. Salakhutdinov, R. Wang, "On exact computation with
    an infinitely wide neural net", NeurIPS 2019, arXiv:1904.11955, Theorem 3.1.
    """
    cfg = result.config
    problems = []
    if cfg["activation"] != "relu":
        problems.append(f"activation is {cfg['activation']!r}, the theorem is for relu")
    if cfg["parameterization"] != "ntk":
        problems.append("parameterization must be 'ntk'")
    if cfg["b_std"] not in (None, 0.0):
        problems.append(f"b_std={cfg['b_std']} (the theorem has no biases)")
    if cfg["depth"] < 1:
        problems.append("depth must be >= 1 (L^6 log(L/delta) vanishes at L = 0)")
    if cfg["w_std"] <= 0:
        problems.append("w_std must be > 0")
    if problems:
        raise ValueError("result: arora_bound does not apply: " + "; ".join(problems) + ".")
    if not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}.")
    C = check_std(C, "C")
    L = cfg["depth"]
    X = np.asarray(cfg["X"], dtype=float)
    d = X.shape[1]
    norms = np.linalg.norm(X, axis=1)
    keep = norms > 0
    # error in Arora's normalization at unit-norm inputs: their inputs are X sqrt(2/d)
    # (times w_std / sqrt 2 per layer for w_std != sqrt 2)
    scale = (2.0 / cfg["w_std"] ** 2) ** (L + 1) * d / 2.0 / np.outer(norms[keep], norms[keep])
    log_term = L ** 6 * math.log(L / delta)
    rows = {k: [] for k in ("width", "eps_measured", "eps_bound", "ratio", "C_tight")}
    n_seeds = None
    for w in result.widths:
        errs = [np.max(e[np.ix_(keep, keep)] * scale) for e in _pairwise_errors(result, w, "ntk")]
        n_seeds = len(errs)
        eps_meas = float(np.quantile(errs, 1 - delta)) / (L + 1)
        eps_bd = (C * log_term / w) ** 0.25
        rows["width"].append(w)
        rows["eps_measured"].append(eps_meas)
        rows["eps_bound"].append(eps_bd)
        rows["ratio"].append(eps_bd / eps_meas if eps_meas > 0 else float("inf"))
        rows["C_tight"].append(w * eps_meas ** 4 / log_term)
    out = {k: np.asarray(v) for k, v in rows.items()}
    out["C_cover"] = float(np.max(out["C_tight"]))
    out["n_seeds"] = n_seeds
    out["L"] = L
    out["delta"] = float(delta)
    return out


def uniform_bound(result, C3=(1.0, 1.5, 2.0), d=None):
    """The per-layer uniform bound ``C2 (C3^L / m^(1/6) + sqrt(d L log m / m))`` vs the data.

    The bound (quoted in the project's source document 001, from the uniform-concentration
    analysis of multi-layer networks) states that for ``m >= C d^2 exp(L^2)``, with
    probability ``>= 1 - exp(-C1 m^(1/3))``, for every layer ``l``,
    ``sup |H^(l) - Phi^(l)| <= C2 (C3^L / m^(1/6) + sqrt(d L log m / m))``. The constants
    ``C1, C2, C3`` are not given. We take ``H^(l)`` to be the empirical NTK of layer ``l``
    (``theta[l]`` of :func:`width_sweep`, exact per-unit NTKs; ``l = L+1`` is the network's)
    and ``Phi^(l) = Theta^l``, ``L = depth`` (at least 1), ``d`` the input dimension, and the
    sup over the finite set of points of the sweep (a lower bound of the true sup).

    Since ``C2`` and ``C3`` are unknown, we report, for each given ``C3``, the smallest
    ``C2`` that makes the bound cover every measured run at every width
    (``max over runs of error / (C3^L m^(-1/6) + sqrt(d L log m / m))``) and, at the
    largest width, how many times the covering bound exceeds the median measured error.

    Parameters
    ----------
    result : SweepResult
    C3 : float or sequence of float
    d : int, optional
        Input dimension in the bound; default the number of columns of the sweep's ``X``.

    Returns
    -------
    dict
        ``layers`` (``1 .. L+1``), ``C3`` (array), ``C2_min`` (array ``(len(C3), L+1)``),
        ``looseness_at_max_width`` (same shape), ``max_width``, and ``measured_slope`` (the
        fitted exponent of the max-abs error per layer; ``nan`` where the error is exactly 0,
        as for ``l = 1``).
    """
    cfg = result.config
    C3 = np.atleast_1d(np.asarray(C3, dtype=float))
    if C3.ndim != 1 or not np.all(np.isfinite(C3)) or np.any(C3 <= 0):
        raise ValueError(f"C3 must be positive finite numbers, got {C3!r}.")
    L = cfg["depth"]
    Lb = max(L, 1)
    d = len(cfg["X"][0]) if d is None else check_positive_int(d, "d")
    layers = list(range(1, L + 2))
    widths = result.widths
    if not widths:
        raise ValueError("result has no runs.")
    mw = max(widths)
    C2 = np.zeros((C3.size, len(layers)))
    loose = np.zeros_like(C2)
    slopes = []
    for j, l in enumerate(layers):
        errs = result.errors(f"theta[{l}].maxabs")
        for i, c3 in enumerate(C3):
            shape = {w: c3 ** Lb / w ** (1 / 6) + math.sqrt(d * Lb * math.log(w) / w)
                     for w in widths}
            C2[i, j] = max(float(np.max(e)) / shape[w] for w, e in errs.items())
            med = float(np.median(errs[mw]))
            loose[i, j] = C2[i, j] * shape[mw] / med if med > 0 else float("inf")
        try:
            slopes.append(result.fit_exponent(f"theta[{l}].maxabs").slope)
        except ValueError:
            slopes.append(float("nan"))
    return {"layers": np.asarray(layers), "C3": C3, "C2_min": C2,
            "looseness_at_max_width": loose, "max_width": mw,
            "measured_slope": np.asarray(slopes)}


# ----------------------------------------------------------------------------- depth vs width
@dataclass
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
    n_seeds: int
    mean: np.ndarray
    var: np.ndarray
    rel_var: np.ndarray
    rel_var_ci: tuple
    ratio: np.ndarray
    fit_c: float
    config: dict


def depth_width_variance(activation="relu", depths=(1, 2, 4, 8), widths=(16, 32, 64, 128),
                         n_seeds=64, x=None, w_std=None, b_std=None, parameterization="ntk",
                         confidence=0.95, progress=True, **activation_params):
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
    depths, widths : iterables of int
    n_seeds : int
        Independent networks per grid point (seeds ``[s, L, m]``).
    x : array_like, shape (1, d) or (d,), optional
        The input; default the first of :func:`default_points`.
    w_std, b_std : float
        Default ``w_std = sqrt(2)`` (variance preserving for ReLU), no biases.
    parameterization : {"ntk", "standard"}
    confidence : float
    progress : bool

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
    n_seeds = check_positive_int(n_seeds, "n_seeds", minimum=2)
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
                for s in range(n_seeds):
                    mlp = MLP(int(m), int(L), act, w_std=w_std, b_std=b_std,
                              parameterization=parameterization, seed=[s, int(L), int(m)],
                              input_dim=x.shape[1])
                    vals[i, j, s] = mlp.ntk(x)[0, 0]
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    from scipy import stats
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
    return DepthWidthResult(depths=depths, widths=widths, n_seeds=n_seeds, mean=mean, var=var,
                            rel_var=rel, rel_var_ci=(lo, hi), ratio=ratio, fit_c=fit_c,
                            config=config)
