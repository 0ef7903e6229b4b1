"""Nothing lost, nothing silently wrong: outputs, files, memory, processes and bad input.

Runnable alone: ``pytest tests/test_reliability.py``. Fault tests start real subprocesses
(``python -m infntk ...``), kill them with SIGKILL or SIGINT in the middle of a write, and look
at what is on disk: either the previous file intact or no final file, and a rerun that resumes
and gives bitwise the result of an uninterrupted run.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import infntk
from infntk import _gram, _io, dynamics, empirical, hermite, quadrature, spectrum
from infntk.cli import main
from infntk.convergence import SweepResult, width_sweep

from tolerances import CLOSED_FORM_RTOL, rel_err_vs_max, tolerance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# progress recorded after every block: the fault tests kill at a known number of blocks
ENV = dict(os.environ, PYTHONPATH=ROOT, NUMBA_NUM_THREADS="1", INFNTK_PROGRESS_INTERVAL="0")
RNG = np.random.default_rng(20240610)
X5 = RNG.normal(size=(5, 3))


# ============================================================================ bad inputs
def _mlp():
    return empirical.MLP(8, 1, "relu", seed=0, input_dim=3)


def _flow(K, lr=1.0):
    return dynamics.GradientFlow(K, None, np.ones(len(K)), lr=lr)


#: (module, what, call, exception types, a word the message must contain)
BAD_INPUTS = [
    ("fcnet", "w_std=1e200", lambda: infntk.FCNet("relu", 2, w_std=1e200).ntk(X5),
     OverflowError, "w_std"),
    ("fcnet", "b_std=1e200", lambda: infntk.FCNet("relu", 2, b_std=1e200).ntk(X5),
     OverflowError, "b_std"),
    ("fcnet", "tol='x'", lambda: infntk.FCNet("tanh", 2, tol="x"), TypeError, "tol"),
    ("fcnet", "tol=2", lambda: infntk.FCNet("tanh", 2, tol=2.0), ValueError, "tol"),
    ("fcnet", "deriv=5 (at construction)", lambda: infntk.FCNet(np.tanh, 2, deriv=5),
     TypeError, "deriv"),
    ("fcnet", "callable returning complex", lambda: infntk.FCNet(
        lambda x: x + 1j, 1).ntk(X5), TypeError, "complex"),
    ("fcnet", "depth=-1", lambda: infntk.FCNet("relu", -1), ValueError, "depth"),
    ("fcnet", "depth=1.5", lambda: infntk.FCNet("relu", 1.5), TypeError, "depth"),
    ("fcnet", "width=2.5 (standard)", lambda: infntk.FCNet(
        "relu", 1, parameterization="standard", width=2.5), TypeError, "width"),
    ("fcnet", "complex X", lambda: infntk.FCNet("relu", 1).ntk(X5 + 1j), TypeError, "X1"),
    ("fcnet", "block_rows=0", lambda: infntk.FCNet("relu", 1).kernels(X5, block_rows=0),
     ValueError, "block_rows"),
    ("gram", "out_nngp is out_ntk", lambda: (lambda o: infntk.FCNet("relu", 1).kernels(
        X5, out_nngp=o, out_ntk=o))(np.empty((5, 5))), ValueError, "out_nngp"),
    ("gram", "out_ntk overlaps out_nngp", lambda: (lambda o: infntk.FCNet("relu", 1).kernels(
        X5[:2], X5[:3], out_nngp=o[:, :3], out_ntk=o[:, 1:4]))(np.empty((2, 4))), ValueError,
     "shares memory"),
    ("gram", "out_ntk is X1", lambda: (lambda A: infntk.FCNet("relu", 1).kernels(
        A, out_ntk=A))(RNG.normal(size=(3, 3))), ValueError, "X1"),
    ("empirical", "complex X", lambda: _mlp().ntk(X5 + 1j), TypeError, "X1"),
    ("empirical", "complex params", lambda: _mlp().set_params(
        [p + 1j for p in _mlp().params]), TypeError, "params[0]"),
    ("empirical", "callable returning complex", lambda: empirical.MLP(
        8, 1, lambda x: x * (1 + 1j), seed=0).ntk(X5), TypeError, "complex"),
    ("empirical", "seed=1.5", lambda: empirical.MLP(8, 1, "relu", seed=1.5), TypeError, "seed"),
    ("empirical", "seed=True", lambda: empirical.MLP(8, 1, "relu", seed=True), TypeError,
     "seed"),
    ("empirical", "seed=[1, 2.5]", lambda: empirical.MLP(8, 1, "relu", seed=[1, 2.5]),
     TypeError, "seed"),
    ("empirical", "width=16.5", lambda: empirical.MLP(16.5, 1, "relu"), TypeError, "width"),
    ("empirical", "overflow (w_std=1e100)", lambda: empirical.MLP(
        8, 3, "relu", w_std=1e100, seed=0).ntk(X5), OverflowError, "w_std"),
    ("empirical", "NaN activation (log)", lambda: empirical.MLP(
        8, 1, np.log, seed=0).nngp(X5), ValueError, "NaN"),
    ("convergence", "seeds=[0, 1.5]", lambda: width_sweep(
        "relu", 1, widths=[4], seeds=[0, 1.5], progress=False), TypeError, "seeds"),
    ("convergence", "widths=[4.5]", lambda: width_sweep(
        "relu", 1, widths=[4.5], seeds=2, progress=False), TypeError, "widths"),
    ("dynamics", "K_train not PSD", lambda: dynamics.gradient_flow(
        np.array([[1.0, 2.0], [2.0, 1.0]]), None, np.ones(2), t=50.0), ValueError,
     "positive semi-definite"),
    ("dynamics", "kernel_ridge K not PSD", lambda: dynamics.kernel_ridge(
        np.array([[1.0, 2.0], [2.0, 1.0]]), None, np.ones(2), ridge=0.0), ValueError,
     "positive semi-definite"),
    ("dynamics", "ridge_loo_error K not PSD", lambda: dynamics.ridge_loo_error(
        np.array([[1.0, 2.0], [2.0, 1.0]]), np.ones(2), [1.0]), ValueError,
     "positive semi-definite"),
    ("dynamics", "complex y", lambda: dynamics.gradient_flow(
        np.eye(2), None, np.ones(2) * 1j, t=1.0), TypeError, "y"),
    ("dynamics", "flow_filter t=-1", lambda: dynamics.flow_filter([1.0], t=-1.0), ValueError,
     "t"),
    ("dynamics", "flow_filter lr=0", lambda: dynamics.flow_filter([1.0], 1.0, lr=0.0),
     ValueError, "lr"),
    ("dynamics", "flow_filter n=0", lambda: dynamics.flow_filter([1.0], 1.0, n=0), ValueError,
     "n"),
    ("dynamics", "flow_filter NaN eigenvalue", lambda: dynamics.flow_filter([np.nan], 1.0),
     ValueError, "eigenvalues"),
    ("dynamics", "gd_filter steps=1.5", lambda: dynamics.gd_filter([1.0], 1.5), TypeError,
     "steps"),
    ("dynamics", "gd_filter steps=-1", lambda: dynamics.gd_filter([1.0], -1), ValueError,
     "steps"),
    ("dynamics", "gd_filter lr='x'", lambda: dynamics.gd_filter([1.0], 1, lr="x"), TypeError,
     "lr"),
    ("dynamics", "ridge_filter ridge=-1", lambda: dynamics.ridge_filter([1.0], -1.0),
     ValueError, "ridge"),
    ("dynamics", "ridge_filter complex", lambda: dynamics.ridge_filter([1j], 1.0), TypeError,
     "eigenvalues"),
    ("dynamics", "equivalent_ridge n=0", lambda: dynamics.equivalent_ridge(1.0, 0), ValueError,
     "n"),
    ("dynamics", "equivalent_ridge n=2.5", lambda: dynamics.equivalent_ridge(1.0, 2.5),
     TypeError, "n"),
    ("dynamics", "equivalent_ridge t=0", lambda: dynamics.equivalent_ridge(0.0, 2), ValueError,
     "t"),
    ("spectrum", "legendre_d kmax=-1", lambda: spectrum.legendre_d([0.5], 3, -1), ValueError,
     "kmax"),
    ("spectrum", "legendre_d d=1", lambda: spectrum.legendre_d([0.5], 1, 3), ValueError, "d"),
    ("spectrum", "legendre_d d=2.5", lambda: spectrum.legendre_d([0.5], 2.5, 3), TypeError,
     "d"),
    ("spectrum", "legendre_d t=NaN", lambda: spectrum.legendre_d([np.nan], 3, 3), ValueError,
     "t"),
    ("spectrum", "legendre_d t complex", lambda: spectrum.legendre_d([1j], 3, 3), TypeError,
     "t"),
    ("quadrature", "order=1", lambda: quadrature.dual_quadrature("erf", 1.0, 1.0, rho=0.5,
                                                                 order=1), ValueError, "order"),
    ("quadrature", "derivative='yes'", lambda: quadrature.dual_quadrature(
        "erf", 1.0, 1.0, rho=0.5, derivative="yes"), TypeError, "derivative"),
    ("quadrature", "rho=2", lambda: quadrature.dual_quadrature("erf", 1.0, 1.0, rho=2.0),
     ValueError, "rho"),
    ("quadrature", "q1=-1", lambda: quadrature.dual_quadrature("erf", -1.0, 1.0, rho=0.5),
     ValueError, "q1"),
    ("quadrature", "q1=inf", lambda: quadrature.dual_quadrature("erf", np.inf, 1.0, rho=0.5),
     ValueError, "q1"),
    ("hermite", "coefficients K=-1", lambda: hermite.coefficients("erf", -1), ValueError, "K"),
    ("hermite", "coefficients q=-1", lambda: hermite.coefficients("erf", 4, q=-1.0),
     ValueError, "q"),
    ("hermite", "coefficients precision='x'", lambda: hermite.coefficients(
        "erf", 4, precision="x"), ValueError, "precision"),
]


@pytest.mark.parametrize("module, what, call, exc, word", BAD_INPUTS,
                         ids=[f"{m}:{w}" for m, w, *_ in BAD_INPUTS])
def test_bad_input_raises_clear_error(module, what, call, exc, word):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    assert word in msg, f"{what}: message does not name {word!r}: {msg}"
    assert "\n" not in msg.strip() and len(msg) < 600


# ============================================================================ the driver
class _StubEngine:
    """An engine whose blocks are constants (and optionally one bad value), recording calls."""

    def __init__(self, bad=None):
        self.bad, self.blocks = bad, []

    def rows(self, X):
        return X

    def prepare(self, r1, r2, symmetric):
        class Plan:
            error_bound = orders = None
        return Plan()

    def block(self, plan, X1, X2, G, r0, symmetric, out_nngp, out_ntk):
        self.blocks.append(r0)
        out_nngp[...] = 1.0
        out_ntk[...] = 2.0
        if self.bad is not None and r0 <= self.bad[0] < r0 + out_ntk.shape[0]:
            out_ntk[self.bad[0] - r0, self.bad[1]] = self.bad[2]

    def finish(self, plan):
        pass

    def diag(self, rows):
        return np.ones(len(rows)), np.ones(len(rows))


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("symmetric", [True, False])
def test_nonfinite_block_raises_overflow_naming_the_entry(value, symmetric):
    X = np.ones((10, 2))
    with pytest.raises(OverflowError, match=r"ntk kernel .* row 7, column 3"):
        _gram.gram(_StubEngine(bad=(7, 3, value)), X, X, symmetric, block_rows=4, label="NET")


def test_symmetric_check_reads_only_the_written_triangle():
    # the strict upper part of a symmetric block is never written: garbage there is no error
    class Upper(_StubEngine):
        def block(self, plan, X1, X2, G, r0, symmetric, out_nngp, out_ntk):
            for dst in (out_nngp, out_ntk):
                dst[...] = np.nan
                for i in range(dst.shape[0]):
                    dst[i, :r0 + i + 1] = 1.0
    X = np.ones((9, 2))
    k = _gram.gram(Upper(), X, X, True, block_rows=4)
    assert np.array_equal(k.ntk, np.ones((9, 9)))


def test_huge_rows_are_never_silently_nonfinite():
    """Rows of norm 1e80 (relu): the kernel 2.5e159-ish is representable, so the result must
    be finite and right, or (until the scaled formulation lands) an OverflowError."""
    X = np.array([[1.0, 0.0], [0.6, 0.8]]) * 1e80
    net = infntk.FCNet("relu", depth=2, w_std=2 ** 0.5, b_std=None)
    try:
        k = net.kernels(X)
    except OverflowError as exc:
        assert "row" in str(exc) and "column" in str(exc)
        return
    small = net.kernels(X * 1e-80)       # exact positive homogeneity of degree 2
    assert np.isfinite(k.ntk).all()
    assert rel_err_vs_max(k.ntk * 1e-160, small.ntk) <= CLOSED_FORM_RTOL


def test_memory_check_before_allocating(monkeypatch):
    monkeypatch.setattr(_gram, "available_memory", lambda: 10_000)
    eng = _StubEngine()
    X = np.ones((100, 2))
    with pytest.raises(MemoryError, match=r"needs .* out_nngp=/out_ntk= memory maps"):
        _gram.gram(eng, X, X, True)
    assert eng.blocks == []          # nothing computed
    with pytest.raises(MemoryError):
        infntk.FCNet("relu", 1).kernels(np.ones((100, 2)))


def test_memmaps_of_one_file_are_refused(tmp_path):
    p = str(tmp_path / "K.npy")
    a = np.lib.format.open_memmap(p, mode="w+", dtype=np.float64, shape=(5, 5))
    b = np.lib.format.open_memmap(p, mode="r+")
    with pytest.raises(ValueError, match="out_nngp shares memory with out_ntk"):
        infntk.FCNet("relu", 1).kernels(X5, out_nngp=a, out_ntk=b)


def test_memmap_outputs_still_work(tmp_path):
    a = np.lib.format.open_memmap(str(tmp_path / "a.npy"), "w+", np.float64, (5, 5))
    b = np.lib.format.open_memmap(str(tmp_path / "b.npy"), "w+", np.float64, (5, 5))
    net = infntk.FCNet("erf", 2)
    net.kernels(X5, out_nngp=a, out_ntk=b, block_rows=2)
    ref = net.kernels(X5)
    assert np.array_equal(a, ref.nngp) and np.array_equal(b, ref.ntk)


# ============================================================================ _io
def test_atomic_open_keeps_old_file_on_error(tmp_path):
    p = tmp_path / "r.json"
    p.write_text('{"old": 1}')
    with pytest.raises(RuntimeError):
        with _io.atomic_open(str(p), "w") as fh:
            fh.write('{"new": ')
            raise RuntimeError("boom")
    assert json.loads(p.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["r.json"]         # no temporary left behind


def test_output_that_is_an_input_is_refused_even_with_overwrite(tmp_path):
    x = tmp_path / "X.npy"
    np.save(x, X5)
    os.link(x, tmp_path / "hard.npy")
    os.symlink(x, tmp_path / "soft.npy")
    for alias in ("X.npy", "hard.npy", "soft.npy", "./X.npy"):
        with pytest.raises(ValueError, match="refusing to overwrite an input"):
            _io.check_output_path(str(tmp_path / alias), [str(x)], overwrite=True)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _io.check_output_path(str(tmp_path / "hard.npy"))


def test_disk_full_is_one_clear_error(tmp_path, monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 9, 1))
    prog = _io.BlockProgress({"k": str(tmp_path / "K.npy")}, (100, 100), {"a": 1})
    with pytest.raises(_io.DiskSpaceError, match=r"K.npy.*needs 80\d+ bytes, 1 free"):
        prog.open()
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(_io, "check_disk_space", lambda *a: None)
    rc = main(["kernel", str(_save(tmp_path, "X.npy", X5)), "--out", str(tmp_path / "K.npy"),
               "--no-progress"])
    assert rc == 0            # shutil.disk_usage lies; posix_fallocate still succeeds


def test_resume_refuses_other_settings(tmp_path):
    paths = {"k": str(tmp_path / "K.npy")}
    prog = _io.BlockProgress(paths, (4, 4), {"inputs": "aaa"})
    prog.interval = 0.0                               # record every block
    mm = prog.open()
    mm["k"][:2] = 1.0
    prog.record(0, 2)
    del mm, prog                                      # "killed" before the commit
    with pytest.raises(FileExistsError, match="other inputs or settings"):
        _io.BlockProgress(paths, (4, 4), {"inputs": "bbb"}).open()
    again = _io.BlockProgress(paths, (4, 4), {"inputs": "aaa"})
    again.open()
    assert again.resumed and again.done(0, 2) and not again.done(2, 4)
    fresh = _io.BlockProgress(paths, (4, 4), {"inputs": "bbb"}, overwrite=True)
    fresh.open()
    assert not fresh.resumed


def test_sweep_result_save_is_atomic_and_not_overwriting(tmp_path):
    res = width_sweep("relu", 1, widths=[4], seeds=2, X=X5, progress=False)
    p = str(tmp_path / "s.json")
    res.save(p)
    with pytest.raises(FileExistsError):
        res.save(p)
    res.save(p, overwrite=True)
    assert SweepResult.load(p).records.keys() == res.records.keys()


def test_width_sweep_checkpoint_resumes_identically(tmp_path):
    ck = str(tmp_path / "ck.json")
    full = width_sweep("relu", 1, widths=[4, 8], seeds=2, X=X5, progress=False)
    part = width_sweep("relu", 1, widths=[4], seeds=2, X=X5, progress=False, checkpoint=ck)
    assert len(SweepResult.load(ck).records) == 2
    res = width_sweep("relu", 1, widths=[4, 8], seeds=2, X=X5, progress=False, checkpoint=ck)
    assert res.complete and part.complete
    for key, rec in full.records.items():
        assert rec["errors"] == res.records[key]["errors"]
    with pytest.raises(ValueError, match="another configuration"):
        width_sweep("relu", 2, widths=[4], seeds=2, X=X5, progress=False, checkpoint=ck)


def test_distributed_writers_are_atomic_and_resumable(tmp_path):
    pytest.importorskip("dask")
    from infntk.distributed import gram, gram_to_npy, to_npy
    net = infntk.FCNet("relu", 2)
    X = RNG.normal(size=(13, 3))
    stem = str(tmp_path / "K")
    out = gram_to_npy(net, X, path=stem, chunks=4)
    ref = {k: np.array(v) for k, v in out.items()}
    with pytest.raises(FileExistsError):
        gram_to_npy(net, X, path=stem, chunks=4)
    # simulate a kill after two rows of blocks: a partial file and its progress record
    os.replace(f"{stem}_nngp.npy", f"{stem}_nngp.npy.partial")
    os.replace(f"{stem}_ntk.npy", f"{stem}_ntk.npy.partial")
    key = {"inputs": _io.hash_arrays(X, None), "network": repr(net), "tol": net.tol,
           "chunks": [4, 4], "kernels": ["nngp", "ntk"]}
    prog = _io.BlockProgress({"nngp": f"{stem}_nngp.npy", "ntk": f"{stem}_ntk.npy"},
                             (13, 13), key)
    prog.blocks = {(0,), (1,)}
    prog._write_sidecar()
    for k in ("nngp", "ntk"):
        mm = np.lib.format.open_memmap(f"{stem}_{k}.npy.partial", mode="r+")
        mm[8:] = -7.0            # rows not yet written by the "killed" run
        mm[:, 8:] = np.where(np.arange(13)[:, None] >= 8, -7.0, mm[:, 8:])
        mm.flush()
        del mm
    again = gram_to_npy(net, X, path=stem, chunks=4)
    for k in ("nngp", "ntk"):
        assert np.array_equal(again[k], ref[k])
    assert sorted(os.listdir(tmp_path)) == ["K_nngp.npy", "K_ntk.npy"]
    p = str(tmp_path / "T.npy")
    to_npy(gram(net, X, chunks=5).ntk, p)
    with pytest.raises(FileExistsError):
        to_npy(gram(net, X, chunks=5).ntk, p)
    assert np.array_equal(np.load(p), ref["ntk"])


# ============================================================================ CLI
def _save(d, name, arr):
    p = d / name
    np.save(p, arr)
    return p


def _cli(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.mark.parametrize("args, word", [
    (["kernel", "{X}", "--out", "{d}/K.npy", "--block-rows", "0"], "--block-rows must be >= 1"),
    (["kernel", "{X}", "--out", "{d}/K.npy", "--block-rows", "-3"], "--block-rows"),
    (["kernel", "{X}", "--out", "{X}", "--kernel", "ntk"], "refusing to overwrite an input"),
    (["kernel", "{X}", "--y", "{Y}", "--out", "{Y}", "--kernel", "nngp"],
     "refusing to overwrite an input"),
    (["kernel", "{d}/K_ntk.npy", "--out", "{d}/K.npy"], "refusing to overwrite an input"),
    (["kernel", "{X}", "--y", "{Y}", "--out", "{X}", "--kernel", "ntk", "--force"],
     "refusing to overwrite an input"),
    (["kernel", "{X}", "--out", "{d}/K.npy", "--kernel", "ntk", "--depth", "-1"], "--depth"),
    (["kernel", "{X}", "--out", "{d}/K.txt"], "--out must end in .npz or .npy"),
    (["kernel", "{X}", "--out", "{d}/nodir/K.npy"], "does not exist"),
    (["kernel", "{X}", "--out", "{d}/K.npz", "--w-std", "1e200"], "w_std"),
    (["sweep", "--n-points", "0", "--out-csv", "{d}/s.csv", "--out-png", "{d}/s.png"],
     "--n-points"),
    (["sweep", "--dim", "0", "--out-csv", "{d}/s.csv", "--out-png", "{d}/s.png"], "--dim"),
    (["sweep", "--out-csv", "{d}/s.csv", "--out-png", "{d}/s.xyz"], "unsupported figure format"),
    (["sweep", "--seeds", "1", "--out-csv", "{d}/s.csv", "--out-png", "{d}/s.png"], "--seeds"),
    (["sweep", "--widths", "8,x", "--out-csv", "{d}/s.csv", "--out-png", "{d}/s.png"],
     "--widths"),
    (["sweep", "--depth", "-2", "--out-csv", "{d}/s.csv", "--out-png", "{d}/s.png"], "--depth"),
    (["sweep", "--out-csv", "{d}/exists.csv", "--out-png", "{d}/s.png"], "--force"),
    (["demo", "--depth", "-1"], "--depth must be >= 0"),
    (["demo", "--depth", "x"], "--depth expects an integer"),
])
def test_cli_bad_option_one_line_exit_2_before_computing(tmp_path, capsys, args, word):
    X, Y = _save(tmp_path, "X.npy", X5), _save(tmp_path, "Y.npy", X5[:2])
    _save(tmp_path, "K_ntk.npy", X5)
    (tmp_path / "exists.csv").write_text("keep")
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    args = [a.format(X=X, Y=Y, d=tmp_path) for a in args]
    rc, err = _cli(args, capsys)
    assert rc == 2 and err.startswith("infntk: error: ") and "\n" not in err, err
    assert word in err, err
    after = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before      # inputs intact, nothing written (a sweep's CSV came first)


def test_cli_existing_output_needs_force(tmp_path, capsys):
    X = _save(tmp_path, "X.npy", X5)
    out = tmp_path / "K.npz"
    out.write_bytes(b"old")
    rc, err = _cli(["kernel", str(X), "--out", str(out), "--no-progress"], capsys)
    assert rc == 2 and "--force" in err and out.read_bytes() == b"old"
    assert main(["kernel", str(X), "--out", str(out), "--no-progress", "--force"]) == 0
    k = infntk.FCNet("relu", 3).kernels(X5)
    with np.load(out) as z:
        assert np.array_equal(z["ntk"], k.ntk) and np.array_equal(z["nngp"], k.nngp)


def _run_until(args, cwd, ready, sig, timeout=60):
    """Start ``python -m infntk args``, wait until ``ready()``, send ``sig``; returns the process
    (and asserts it was still running when signalled, so the fault hit mid-write)."""
    proc = subprocess.Popen([sys.executable, "-m", "infntk"] + args, cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, f"finished before the fault: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, "never became ready"
        time.sleep(0.005)
    assert proc.poll() is None, "finished before the fault could be injected"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _blocks_done(sidecar, n):
    def ready():
        try:
            with open(sidecar) as fh:
                return len(json.load(fh)["blocks"]) >= n
        except (OSError, ValueError, KeyError):
            return False
    return ready


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    d = tmp_path_factory.mktemp("fault")
    # enough blocks (375) that the command is still running when the test, polling its
    # sidecar on a busy machine, gets to signal it (600 rows finished first under load)
    X = np.random.default_rng(7).normal(size=(1500, 4))
    np.save(d / "X.npy", X)
    # the uninterrupted computation (the command line's network, block by block as it does)
    k = infntk.FCNet("relu", depth=12, w_std=1.0, b_std=0.0).kernels(X, block_rows=4)
    np.save(d / "ref_nngp.npy", k.nngp)
    np.save(d / "ref_ntk.npy", k.ntk)
    return d


def test_sigkill_mid_write_leaves_old_file_and_resumes_bitwise(big_input):
    d = big_input
    out = d / "K.npy"
    for k in ("nngp", "ntk"):                   # the previous results, to be kept intact
        np.save(d / f"K_{k}.npy", np.full((3, 3), 42.0))
    args = ["kernel", "X.npy", "--out", "K.npy", "--block-rows", "4", "--depth", "12",
            "--no-progress", "--force"]
    rc, _, _ = _run_until(args, d, _blocks_done(str(d / "K_nngp.npy.progress.json"), 20),
                          signal.SIGKILL)
    assert rc == -signal.SIGKILL
    for k in ("nngp", "ntk"):                   # old files intact, never a partial one
        assert np.array_equal(np.load(d / f"K_{k}.npy"), np.full((3, 3), 42.0))
        assert (d / f"K_{k}.npy.partial").exists()
    res = subprocess.run([sys.executable, "-m", "infntk"] + args, cwd=d, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stderr
    for k in ("nngp", "ntk"):
        assert np.array_equal(np.load(d / f"K_{k}.npy"), np.load(d / f"ref_{k}.npy"))
    assert not list(d.glob("K_*.partial")) and not list(d.glob("K_*.progress.json"))
    assert not out.exists()


def test_sigint_exits_130_one_line_no_final_file(big_input):
    d = big_input
    args = ["kernel", "X.npy", "--out", "C.npy", "--block-rows", "4", "--depth", "12",
            "--no-progress"]
    rc, out, err = _run_until(args, d, _blocks_done(str(d / "C_nngp.npy.progress.json"), 5),
                              signal.SIGINT)
    assert rc == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("infntk: interrupted:"), err
    assert not (d / "C_nngp.npy").exists() and not (d / "C_ntk.npy").exists()
    assert (d / "C_nngp.npy.partial").exists()     # kept for a resume (tested above)


def test_sweep_interrupted_writes_nothing_then_resumes(tmp_path):
    ck = tmp_path / "ck.json"
    args = ["sweep", "--widths", "16,128,256,384", "--seeds", "3", "--depth", "2",
            "--n-points", "4", "--out-csv", "s.csv", "--out-png", "s.png", "--no-progress",
            "--checkpoint", "ck.json"]

    def ready():
        try:
            return len(json.loads(ck.read_text())["records"]) >= 2
        except (OSError, ValueError):
            return False
    rc, out, err = _run_until(args, tmp_path, ready, signal.SIGINT)
    assert rc == 130, err
    assert err.strip().splitlines()[-1].startswith("infntk: interrupted: sweep stopped after")
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "s.png").exists()
    done = len(json.loads(ck.read_text())["records"])
    assert 2 <= done < 12
    res = subprocess.run([sys.executable, "-m", "infntk"] + args, cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "s.csv").exists() and (tmp_path / "s.png").exists()
    rec = SweepResult.load(str(ck))
    assert rec.complete and len(rec.records) == 12
    # the resumed runs equal fresh ones (seeded per (width, seed))
    fresh = width_sweep("relu", 2, widths=[16], seeds=3,
                        X=np.asarray(rec.config["X"]), progress=False)
    for s in range(3):
        assert fresh.records[16, s]["errors"] == rec.records[16, s]["errors"]


# ============================================================================ dynamics
def test_ridge_zero_on_singular_kernel_is_the_pseudo_inverse():
    F = RNG.normal(size=(6, 2))
    K = F @ F.T                                  # rank 2
    Kx = RNG.normal(size=(3, 2)) @ F.T
    y = RNG.normal(size=6)
    pinv = np.linalg.pinv(K, rcond=1e-10, hermitian=True)
    for ridge in (0.0, [0.0, 0.5]):
        p = dynamics.kernel_ridge(K, Kx, y, ridge=ridge)
        test = p.test if np.ndim(ridge) == 0 else p.test[0]
        assert np.isfinite(p.train).all() and np.isfinite(p.test).all()
        tol = tolerance(1e-8, reason="pinv of a rank-2 Gram: rounding amplified by cond ~1e3")
        assert rel_err_vs_max(test, Kx @ pinv @ y) <= tol


def test_lr_above_max_learning_rate_warns_then_raises():
    K = np.array([[2.0, 0.0], [0.0, 1.0]])
    lr_max = dynamics.max_learning_rate(K)
    ok = _flow(K, lr=0.99 * lr_max).predict_steps(50)
    assert np.isfinite(ok.train).all()
    with pytest.warns(RuntimeWarning, match="exceeds max_learning_rate"):
        _flow(K, lr=1.5 * lr_max).predict_steps(5)
    with pytest.warns(RuntimeWarning), pytest.raises(OverflowError, match="max_learning_rate"):
        _flow(K, lr=1.5 * lr_max).predict_steps(5000)


def test_non_psd_rounding_is_accepted():
    F = RNG.normal(size=(5, 2))
    K = F @ F.T                                  # eigenvalues ~ -1e-16 from rounding
    p = dynamics.gradient_flow(K, None, np.ones(5), t=np.inf)
    assert np.isfinite(p.train).all()


# ============================================================================ processes
_FORK_SCRIPT = r"""
import multiprocessing as mp, numpy as np, infntk
X = np.random.default_rng(0).normal(size=(40, 3))
ref = infntk.FCNet("relu", 2).ntk(X)            # compiled and run in the parent first
def work(i):
    return infntk.FCNet("relu", 2).ntk(X).tobytes()
if __name__ == "__main__":
    with mp.get_context("fork").Pool(2) as pool:
        out = pool.map_async(work, range(2)).get(timeout=60)
    assert all(o == ref.tobytes() for o in out)
    import numba
    print("ok", numba.threading_layer())
"""


def test_fork_after_a_kernel_call(tmp_path):
    script = tmp_path / "fork.py"
    script.write_text(_FORK_SCRIPT)
    env = dict(ENV, NUMBA_NUM_THREADS="2")
    env.pop("NUMBA_THREADING_LAYER", None)
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr


def test_four_python_threads_share_a_network():
    net = infntk.FCNet("relu", 3, b_std=0.1)
    Xs = [RNG.normal(size=(60, 3)) for _ in range(8)]
    serial = [net.kernels(X).ntk for X in Xs]
    with ThreadPoolExecutor(4) as pool:
        par = list(pool.map(lambda X: net.kernels(X).ntk, Xs))
    assert all(np.array_equal(a, b) for a, b in zip(serial, par))
    assert threading.active_count() >= 1


# ============================================================================ Numba cache
_CACHE_SCRIPT = r"""
import os, sys
import infntk  # configures Numba
from numba import njit, config
@njit(cache=True)
def f(x):
    return 2 * x
assert f(3) == 6
print(os.environ["NUMBA_CACHE_DIR"], config.CACHE_DIR, os.environ["NUMBA_THREADING_LAYER"])
"""


def test_numba_cache_dir_with_a_read_only_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    mod = tmp_path / "pkg"                    # a read-only "installation" directory
    mod.mkdir()
    (mod / "cachetest.py").write_text(_CACHE_SCRIPT)
    env = {k: v for k, v in ENV.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME",
                                                       "NUMBA_THREADING_LAYER")}
    env["HOME"] = str(home)
    home.chmod(0o500)
    mod.chmod(0o500)
    try:
        res = subprocess.run([sys.executable, str(mod / "cachetest.py")], env=env,
                             capture_output=True, text=True, timeout=120)
    finally:
        mod.chmod(0o700)
        home.chmod(0o700)
    assert res.returncode == 0, res.stderr           # no "no locator available"
    chosen, config_dir, layer = res.stdout.split()
    assert chosen == config_dir and layer in ("tbb", "workqueue")
    if os.geteuid() != 0:                            # root may write anywhere
        assert not chosen.startswith(str(home))
    assert not list(mod.glob("__pycache__/*.nbi"))   # nothing next to the sources


def test_user_numba_settings_are_kept(monkeypatch):
    from infntk import _numba_config
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/somewhere/mine")
    monkeypatch.setenv("NUMBA_THREADING_LAYER", "omp")
    _numba_config._configure()
    assert os.environ["NUMBA_CACHE_DIR"] == "/somewhere/mine"
    assert os.environ["NUMBA_THREADING_LAYER"] == "omp"


def test_compiled_kernels_are_not_cached_in_the_package():
    from infntk._backends import closed
    infntk.FCNet("relu", 1).ntk(X5)
    locator = closed._block_kinked._cache._cache_path
    pkg = os.path.dirname(infntk.__file__)
    assert not os.path.abspath(locator).startswith(pkg), locator


def test_an_interrupt_inside_a_c_callback_counts_as_ctrl_c(monkeypatch, capsys):
    # a SIGINT landing while Numba runs Python from C (loading a cached function) surfaces as
    # a SystemError chained from the KeyboardInterrupt: still a Ctrl-C (exit 130, one line)
    from infntk import cli
    from infntk._numba_config import interrupted_by_user

    def boom(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("<built-in function _numba_unpickle> returned a result with an "
                              "exception set") from exc
    assert interrupted_by_user(SystemError("x").with_traceback(None)) is False
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(func=boom)
    assert cli.main(["kernel", "X.npy", "--out", "K.npy"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["infntk: interrupted: no output written"]

    def other(args):
        raise SystemError("a real bug")
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(func=other)
    with pytest.raises(SystemError, match="a real bug"):
        cli.main(["kernel", "X.npy", "--out", "K.npy"])
