"""infntk.distributed.gram on a dask LocalCluster: equal to the local Gram matrices, block-local.
"""
import sys

import numpy as np
import pytest

pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

import dask

import infntk
from infntk.distributed import _require_dask, gram, gram_to_npy, to_npy
from tolerances import rel_err_vs_max, tolerance

# The issue asks for equality with the local computation to 1e-15 (relative to max|K|): the
# closed forms are pairwise, so a block equals the local block up to the BLAS inner products.
DIST_RTOL = tolerance(1e-15, "the issue's figure; pairwise closed forms, a block differs from "
                                 "the local block only by BLAS inner-product rounding")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        yield c


def _X(n, d=5, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_symmetric_equals_local(client):
    X = _X(30)
    net = infntk.FCNet("leaky_relu", depth=3, w_std=1.3, b_std=0.2, alpha=0.1)
    k = gram(net, X, chunks=7)
    assert k.ntk.chunks == ((7, 7, 7, 7, 2), (7, 7, 7, 7, 2))
    nngp, ntk = client.compute([k.nngp, k.ntk], sync=True)
    ref = net.kernels(X)
    assert rel_err_vs_max(ntk, ref.ntk) <= DIST_RTOL
    assert rel_err_vs_max(nngp, ref.nngp) <= DIST_RTOL
    np.testing.assert_array_equal(ntk, ntk.T)   # upper blocks are transposed lower ones
    # both workers took part
    assert len(client.scheduler_info()["workers"]) == 2


def test_cross_equals_local(client):
    X, Y = _X(25), _X(13, seed=1)
    net = infntk.FCNet("erf", depth=2, w_std=1.5, b_std=0.1)
    k = gram(net, X, Y, chunks=(8, 5))
    assert k.nngp.shape == (25, 13) and k.nngp.chunks == ((8, 8, 8, 1), (5, 5, 3))
    nngp, ntk = dask.compute(k.nngp, k.ntk)   # the Client is the default scheduler
    ref = net.kernels(X, Y)
    assert rel_err_vs_max(ntk, ref.ntk) <= DIST_RTOL
    assert rel_err_vs_max(nngp, ref.nngp) <= DIST_RTOL


def test_graph_holds_only_row_blocks():
    X = _X(40)
    k = gram(infntk.FCNet("relu", depth=2), X, chunks=10)
    graph = dict(k.ntk.__dask_graph__())
    arrays = [v.value for v in graph.values()
              if type(v).__name__ == "DataNode" and isinstance(v.value, np.ndarray)]
    assert len(arrays) == 4 and all(a.shape == (10, 5) for a in arrays)
    blocks = [v for key, v in graph.items() if str(key).startswith("_block")]
    assert len(blocks) == 4 * 5 // 2          # lower triangle with the diagonal
    for task in blocks:                       # the net plus at most two row blocks
        assert len(task.dependencies) <= 3


def test_to_npy(tmp_path):
    X = _X(17)
    net = infntk.FCNet("relu", depth=1)
    mm = to_npy(gram(net, X, chunks=6).ntk, str(tmp_path / "K.npy"))
    assert rel_err_vs_max(mm, net.ntk(X)) <= DIST_RTOL


def test_bad_arguments():
    net = infntk.FCNet("relu", depth=1)
    with pytest.raises(ValueError, match="square"):
        gram(net, _X(5), chunks=(2, 3))
    with pytest.raises(TypeError, match="chunks"):
        gram(net, _X(5), chunks="auto")
    with pytest.raises(ValueError, match="chunks"):
        gram(net, _X(5), chunks=0)
    with pytest.raises(ValueError, match="X2"):
        gram(net, _X(5), _X(5, d=4))
    with pytest.raises(TypeError, match="kernels"):
        gram(object(), _X(5))


def test_missing_dask_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError, match=r"pip install 'infntk\[distributed\]'"):
        _require_dask()


def test_gram_to_npy_symmetric_and_cross(client, tmp_path):
    X, Y = _X(23), _X(9, seed=2)
    net = infntk.FCNet("relu", depth=2, b_std=0.3)
    out = gram_to_npy(net, X, path=str(tmp_path / "S"), chunks=6)
    ref = net.kernels(X)
    assert rel_err_vs_max(out["ntk"], ref.ntk) <= DIST_RTOL
    assert rel_err_vs_max(out["nngp"], ref.nngp) <= DIST_RTOL
    np.testing.assert_array_equal(out["ntk"], np.asarray(out["ntk"]).T)
    out = gram_to_npy(net, X, Y, path=str(tmp_path / "C"), chunks=(5, 4), kernels=("ntk",))
    assert list(out) == ["ntk"] and not (tmp_path / "C_nngp.npy").exists()
    assert rel_err_vs_max(out["ntk"], net.ntk(X, Y)) <= DIST_RTOL
    with pytest.raises(ValueError, match="kernels"):
        gram_to_npy(net, X, path=str(tmp_path / "E"), kernels=("foo",))


@pytest.mark.parametrize("readout", ["gap", "flatten"])
def test_images_equal_local(client, readout):
    # a convolutional network's blocks take images (n, H, W, C); each block's self statistics
    # come from its own images, so the blocks agree with the local Gram matrices
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((11, 5, 4, 2)), rng.standard_normal((6, 5, 4, 2))
    head = infntk.GlobalAvgPool() if readout == "gap" else infntk.Flatten()
    net = infntk.Network([infntk.Conv(3, "same", 1.4, 0.1), infntk.Activation("relu"),
                          infntk.Conv(3, "circular", 1.3, 0.2), infntk.Activation("erf"),
                          head, infntk.Dense(1.2, 0.1)])
    k = gram(net, X, chunks=4)
    assert k.ntk.chunks == ((4, 4, 3), (4, 4, 3))
    nngp, ntk = client.compute([k.nngp, k.ntk], sync=True)
    ref = net.kernels(X)
    assert rel_err_vs_max(ntk, ref.ntk) <= DIST_RTOL
    assert rel_err_vs_max(nngp, ref.nngp) <= DIST_RTOL
    np.testing.assert_array_equal(ntk, ntk.T)
    c = gram(net, X, Y, chunks=(5, 4))
    ntk_c, = dask.compute(c.ntk)
    assert rel_err_vs_max(ntk_c, net.ntk(X, Y)) <= DIST_RTOL
    with pytest.raises(ValueError, match="X2"):
        gram(net, X, rng.standard_normal((3, 5, 4, 1)))
