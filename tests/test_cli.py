"""The ``infntk`` command line: outputs equal the library's, user errors are one line + exit 2."""
import subprocess
import sys

import numpy as np
import pytest

import infntk
from infntk.cli import main
from tolerances import tolerance

# The CLI computes in row blocks (--block-rows), which changes the shape of the BLAS product
# X Y^T and hence its rounding: allow a few ulp relative, and a few ulp of O(1) absolute for
# entries near 0.
BLOCK_RTOL = tolerance(1e-13, "row blocks change the BLAS shape of X Y^T: a few ulp relative")
BLOCK_ATOL = tolerance(1e-15, "row blocks change the BLAS rounding: a few ulp of O(1) entries")


def _points(n=7, d=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_python_m_help_subprocess():
    r = subprocess.run([sys.executable, "-m", "infntk", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0
    assert "usage: infntk" in r.stdout and "kernel" in r.stdout and "demo" in r.stdout


@pytest.mark.parametrize("sub", ["kernel", "sweep", "demo"])
def test_subcommand_help(sub, capsys):
    assert main([sub, "--help"]) == 0
    assert f"usage: infntk {sub}" in capsys.readouterr().out


def test_demo_passes_self_check(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "self-check PASS" in out and "NTK Theta" in out and "ms first call" in out
    # the printed matrix is the library's
    from infntk.cli import DEMO_X
    ntk = infntk.FCNet("relu", depth=3, w_std=2 ** 0.5, b_std=None).ntk(DEMO_X)
    assert f"{ntk[0, 1]:.5f}" in out and f"{ntk[3, 4]:.5f}" in out


def test_kernel_npz_symmetric_and_cross(tmp_path):
    X, Y = _points(), _points(5, seed=1)
    np.savetxt(tmp_path / "X.csv", X, delimiter=",")
    np.save(tmp_path / "Y.npy", Y)
    net = infntk.FCNet("leaky_relu", depth=2, w_std=1.2, b_std=None, alpha=0.2)
    args = ["--depth", "2", "--activation", "leaky_relu", "--param", "alpha=0.2",
            "--w-std", "1.2", "--b-std", "none", "--no-progress", "--block-rows", "3"]
    assert main(["kernel", str(tmp_path / "X.csv"), "--out", str(tmp_path / "k.npz")] + args) == 0
    k = np.load(tmp_path / "k.npz")
    # CSV round trip: savetxt writes 18 significant digits, exact for float64
    ref = net.kernels(X)
    np.testing.assert_allclose(k["ntk"], ref.ntk, rtol=BLOCK_RTOL, atol=BLOCK_ATOL)
    np.testing.assert_allclose(k["nngp"], ref.nngp, rtol=BLOCK_RTOL, atol=BLOCK_ATOL)
    assert main(["kernel", str(tmp_path / "X.csv"), "--y", str(tmp_path / "Y.npy"),
                 "--out", str(tmp_path / "c.npz"), "--kernel", "ntk"] + args) == 0
    c = np.load(tmp_path / "c.npz")
    assert list(c.keys()) == ["ntk"]
    # the row blocks change the shape of the BLAS product X Y^T, hence its rounding: allow
    # a few ulp (the symmetric case above happens to be bitwise equal, not guaranteed)
    np.testing.assert_allclose(c["ntk"], net.kernels(X, Y).ntk, rtol=BLOCK_RTOL, atol=BLOCK_ATOL)


def test_kernel_npy_memmap_blocks(tmp_path):
    X = _points(11, 4)
    np.save(tmp_path / "X.npy", X)
    net = infntk.FCNet("erf", depth=3, w_std=1.5, b_std=0.1)
    base = ["kernel", str(tmp_path / "X.npy"), "--activation", "erf", "--depth", "3",
            "--w-std", "1.5", "--b-std", "0.1", "--block-rows", "4", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "K.npy")]) == 0
    ref = net.kernels(X)
    np.testing.assert_allclose(np.load(tmp_path / "K_ntk.npy"), ref.ntk, rtol=BLOCK_RTOL,
                               atol=BLOCK_ATOL)
    np.testing.assert_allclose(np.load(tmp_path / "K_nngp.npy"), ref.nngp, rtol=BLOCK_RTOL,
                               atol=BLOCK_ATOL)
    assert main(base + ["--out", str(tmp_path / "T.npy"), "--kernel", "ntk"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "T.npy"), ref.ntk, rtol=BLOCK_RTOL,
                               atol=BLOCK_ATOL)


def _bad_inputs(tmp_path):
    np.save(tmp_path / "X.npy", _points())
    np.save(tmp_path / "v.npy", np.arange(3.0))
    np.save(tmp_path / "W.npy", _points(4, 5))
    bad = _points()
    bad[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    (tmp_path / "junk.csv").write_text("1,2,x\n3,4,5\n")
    (tmp_path / "X.txt2").write_text("1")
    X, out = str(tmp_path / "X.npy"), str(tmp_path / "o.npz")
    return [
        (["kernel", str(tmp_path / "missing.npy"), "--out", out], "no such file"),
        (["kernel", str(tmp_path / "junk.csv"), "--out", out], "cannot read"),
        (["kernel", str(tmp_path / "X.txt2"), "--out", out], "unsupported file type"),
        (["kernel", str(tmp_path / "v.npy"), "--out", out], "2-D"),
        (["kernel", X, "--y", str(tmp_path / "W.npy"), "--out", out], "same number of columns"),
        (["kernel", str(tmp_path / "nan.npy"), "--out", out], "NaN"),
        (["kernel", X, "--out", out, "--depth", "-1"], "depth"),
        (["kernel", X, "--out", out, "--activation", "nope"], "nope"),
        (["kernel", X, "--out", out, "--param", "alpha"], "NAME=VALUE"),
        (["kernel", X, "--out", out, "--b-std", "abc"], "b-std"),
        (["kernel", X, "--out", out, "--w-std", "-1"], "w_std"),
        (["kernel", X, "--out", out, "--parameterization", "standard"], "width"),
        (["kernel", X, "--out", str(tmp_path / "o.mat")], ".npz or .npy"),
        (["kernel", X, "--out", str(tmp_path / "nodir" / "o.npz")], "does not exist"),
        (["kernel", X], "--out"),
        (["sweep", "--widths", "a,b"], "widths"),
        (["sweep", "--seeds", "1"], "seeds"),
        (["frobnicate"], "invalid choice"),
    ]


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    for argv, needle in _bad_inputs(tmp_path):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("infntk: error:"), (argv, err)
        assert needle in lines[0], (argv, lines[0])
        assert "Traceback" not in err


def test_sweep_writes_table_and_plot(tmp_path, capsys):
    csv, png = tmp_path / "s.csv", tmp_path / "s.png"
    assert main(["sweep", "--widths", "16,64", "--seeds", "3", "--depth", "1", "--n-points",
                 "4", "--dim", "3", "--out-csv", str(csv), "--out-png", str(png),
                 "--no-progress"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [ln.split(",") for ln in csv.read_text().splitlines()]
    assert rows[0][:3] == ["metric", "width", "n"]
    ntk_rows = [r for r in rows[1:] if r[0] == "ntk.relfro"]
    assert [int(float(r[1])) for r in ntk_rows] == [16, 64]
    # the table is width_sweep's summary (same seeds, deterministic)
    from infntk.convergence import default_points, width_sweep
    res = width_sweep("relu", depth=1, widths=[16, 64], seeds=3, X=default_points(4, 3, seed=0),
                      progress=False)
    np.testing.assert_allclose([float(r[3]) for r in ntk_rows],
                               res.summary("ntk.relfro")["mean"],
                               rtol=tolerance(1e-9, "the CSV holds 10 significant digits (%.10g)"))
    assert "error ~ width^(" in capsys.readouterr().out
