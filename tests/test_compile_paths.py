"""One compiled specialization per engine: read-only and memory-mapped inputs/outputs share the
signature of ordinary arrays (``infntk._gram.compiled_view``), and ``infntk warmup`` runs.

Each test compares a kernel computed from a memory map against the same kernel computed from
an in-memory copy (bitwise: the compiled code is the same), and counts the compiled
signatures of the engines' Numba functions before and after.
"""
import os

import numpy as np
import pytest

from infntk import FCNet, Network
from infntk._backends import closed, composed
from infntk._backends import conv as conv_engine
from infntk._gram import compiled_view
from infntk._warmup import PATHS, count_specializations, warmup
from infntk.conv import Conv, Flatten
from infntk.layers import Activation, Dense, LayerNorm


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((7, 4))
    Y = rng.standard_normal((5, 4))
    px, py = tmp_path / "X.npy", tmp_path / "Y.npy"
    np.save(px, X)
    np.save(py, Y)
    return X, Y, px, py


def test_compiled_view_maps_readonly_memmap_without_copy(saved):
    X, _, px, _ = saved
    Xm = np.load(px, mmap_mode="r")
    assert not Xm.flags.writeable
    V = compiled_view(np.ascontiguousarray(Xm))
    assert V.flags.writeable and type(V) is np.ndarray
    np.testing.assert_array_equal(V, X)
    # a file mapping, not a copy: the bytes come from the file, not from the heap
    base = V
    while not isinstance(base, np.memmap):
        base = base.base
    assert base.mode == "c" and os.path.samefile(base.filename, px)
    # a row slice keeps its offset in the file
    np.testing.assert_array_equal(compiled_view(Xm[2:5]), X[2:5])


def test_compiled_view_copies_other_readonly_arrays():
    X = np.arange(12.0).reshape(3, 4)
    X.flags.writeable = False
    V = compiled_view(X)
    assert V.flags.writeable and not np.shares_memory(V, X)
    np.testing.assert_array_equal(V, X)
    W = np.ones((2, 2))
    assert compiled_view(W) is W


def _signatures(*dispatchers):
    return sum(len(d.signatures) for d in dispatchers)


def test_readonly_memmap_inputs_add_no_specialization(saved, tmp_path):
    X, Y, px, py = saved
    net = FCNet("relu", depth=2, w_std=1.5, b_std=0.1)
    ref_sym, ref_cross, ref_diag = net.kernels(X), net.kernels(X, Y), net.diag(X)
    before = _signatures(closed._block_kinked, closed.row_statistics)
    Xm, Ym = np.load(px, mmap_mode="r"), np.load(py, mmap_mode="r")
    out = np.lib.format.open_memmap(tmp_path / "o.npy", mode="w+", dtype=np.float64,
                                    shape=(7, 5))
    got_cross = net.kernels(Xm, Ym, out_nngp=out)
    got_sym, got_diag = net.kernels(Xm), net.diag(Xm)
    assert _signatures(closed._block_kinked, closed.row_statistics) == before
    for a, b in ((got_sym, ref_sym), (got_cross, ref_cross)):
        np.testing.assert_array_equal(a.nngp, b.nngp)
        np.testing.assert_array_equal(a.ntk, b.ntk)
    np.testing.assert_array_equal(np.asarray(out), ref_cross.nngp)
    np.testing.assert_array_equal(got_diag, ref_diag)


def test_composed_and_conv_readonly_inputs_add_no_specialization(saved, tmp_path):
    X, Y, px, py = saved
    net = Network([Dense(1.5, 0.1), Activation("erf"), LayerNorm(), Dense(1.5, 0.1)])
    ref = net.kernels(X, Y)
    fns = [composed._input_dense, composed._dense, composed._act_smooth, composed._norm]
    before = _signatures(*fns)
    got = net.kernels(np.load(px, mmap_mode="r"), np.load(py, mmap_mode="r"))
    assert _signatures(*fns) == before
    np.testing.assert_array_equal(got.ntk, ref.ntk)

    imgs = np.random.default_rng(2).standard_normal((3, 3, 3, 2))
    np.save(tmp_path / "I.npy", imgs)
    cnet = Network([Conv(3, "same", 1.5, 0.1), Activation("relu"), Flatten(), Dense(1.5, 0.1)])
    cref = cnet.kernels(imgs)
    before = _signatures(conv_engine.drive, conv_engine.drive_planes, conv_engine._conv_diag,
                         conv_engine._act_diag)
    cgot = cnet.kernels(np.load(tmp_path / "I.npy", mmap_mode="r"))
    assert _signatures(conv_engine.drive, conv_engine.drive_planes, conv_engine._conv_diag,
                      conv_engine._act_diag) == before
    np.testing.assert_array_equal(cgot.ntk, cref.ntk)


def test_warmup_runs_every_path(capsys):
    timings = warmup(verbose=True)
    assert [name for name, _ in timings] == [name for name, _ in PATHS]
    out = capsys.readouterr().out
    assert all(name in out for name, _ in PATHS) and "compiled signatures" in out
    assert count_specializations() > 0


_ONLY_ITS_GROUP = r"""
import json, numpy as np
from infntk import FCNet, Network
from infntk.layers import Activation, Dense, LayerNorm
from infntk._backends import closed, composed
X = np.random.default_rng(0).standard_normal((5, 3))
FCNet("relu", depth=2).kernels(X)
FCNet("step", depth=2).kernels(X, X[:2].copy())
Network([Dense(1.5, 0.1), Activation("abs"), LayerNorm(), Dense(1.5, 0.1)]).kernels(X)
print(json.dumps({f.__name__: len(f.signatures) for f in (
    closed._block_kinked, closed._block_arccos, closed._block_smooth, closed._plain_pass,
    composed._act_kinked, composed._act_arccos, composed._act_smooth, composed._act_row)}))
"""


def test_a_kinked_network_loads_no_other_family_groups_code():
    """One kernel per family group: a ReLU/step network never compiles (or loads) the smooth
    families' loops, the main cost of the closed-form engine's first compilation."""
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _ONLY_ITS_GROUP], capture_output=True,
                         text=True, check=True)
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts == {"_block_kinked": 1, "_block_arccos": 0, "_block_smooth": 0,
                      "_plain_pass": 0, "_act_kinked": 1, "_act_arccos": 0, "_act_smooth": 0,
                      "_act_row": 0}


_CONV_GROUPS = r"""
import json, numpy as np
from infntk import Network
from infntk.conv import Conv, Flatten, GlobalAvgPool
from infntk.layers import Activation, Dense
from infntk._backends import conv as ce
X = np.random.default_rng(0).standard_normal((3, 4, 4, 2))
counts = []
for act, readout in (("relu", Flatten), ("leaky_relu", GlobalAvgPool), ("erf", Flatten),
                     ("sign", GlobalAvgPool), ("arccos", Flatten)):
    a = Activation(act, n=2) if act == "arccos" else Activation(act)
    net = Network([Conv(3, "same", 1.5, 0.1), a, readout(), Dense(1.5, 0.1)])
    net.kernels(X)
    net.kernels(X, X[:2].copy())
    counts.append(len(ce.drive_planes.signatures))
print(json.dumps(counts))
"""


def test_conv_plane_engine_has_two_family_groups():
    """The plane engine is compiled once for networks of the ReLU family alone (Flatten and
    GlobalAvgPool, symmetric and cross, self statistics: one signature) and once for every
    other family (``allf``: the other families' duals are pruned from the first copy)."""
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _CONV_GROUPS], capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [1, 1, 2, 2, 2]
