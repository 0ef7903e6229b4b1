"""Convolutional Gram matrices through the Gram driver, block by block: for every block size
the same floats as the whole-matrix engine (each pair is one run of the pair engines, with the
same argument order, whatever the block), memory-mapped outputs written in place, the memory
check before computing, and resumable command-line writes."""
import numpy as np
import pytest

import infntk
from infntk import _gram
from infntk.cli import main
from infntk.conv import ConvEngine, conv_kernels
from infntk.layer_spec import parse_layers

NETS = {
    "gap": "conv(3,same,1.5,0.1) relu conv(3,circular,1.4,0.2) erf gap dense(1.2,0.1)",
    "flatten": "conv(3,same,1.5,0.1) relu conv(3,same,1.4,0) gelu flatten dense(1.2,0.1)",
    "avgpool": "conv(3,same,1.5,0.1) relu avgpool(2) conv(2,valid,1.3,0.1) relu flatten dense",
}


def _images(n, seed, shape=(6, 6, 2)):
    return np.random.default_rng(seed).standard_normal((n,) + shape)


@pytest.mark.parametrize("name", sorted(NETS))
def test_blocks_equal_the_whole_matrix_engine(name):
    layers = parse_layers(NETS[name])
    net = infntk.Network(layers)
    X, Y = _images(23, 0), _images(9, 1)
    ref_s, ref_c = conv_kernels(layers, X), conv_kernels(layers, X, Y)
    for br in (1, 4, 7, 256):
        k = net.kernels(X, block_rows=br)
        c = net.kernels(X, Y, block_rows=br)
        assert np.array_equal(c.nngp, ref_c[0]) and np.array_equal(c.ntk, ref_c[1])
        assert np.array_equal(k.nngp, ref_s[0]) and np.array_equal(k.ntk, ref_s[1])


def test_memmap_outputs_and_memory_check(tmp_path, monkeypatch):
    layers = parse_layers(NETS["gap"])
    net = infntk.Network(layers)
    X = _images(12, 2)
    k = net.kernels(X)
    mm = {n: np.lib.format.open_memmap(tmp_path / f"{n}.npy", "w+", np.float64, (12, 12))
          for n in ("nngp", "ntk")}
    out = net.kernels(X, out_nngp=mm["nngp"], out_ntk=mm["ntk"], block_rows=5)
    assert out.ntk is mm["ntk"]
    assert np.array_equal(np.asarray(mm["ntk"]), k.ntk)
    assert np.array_equal(np.asarray(mm["nngp"]), k.nngp)
    calls = []
    monkeypatch.setattr(ConvEngine, "block", lambda *a: calls.append(1))
    monkeypatch.setattr(_gram, "available_memory", lambda: 1000)
    with pytest.raises(MemoryError, match="needs"):
        net.kernels(X)
    assert calls == []            # refused before any block was computed
    # room for the 4 x 4 outputs, not for the self statistics (positions x layers per image)
    monkeypatch.setattr(_gram, "available_memory", lambda: 2000)
    with pytest.raises(MemoryError, match="self statistics of 4 images"):
        net.kernels(X[:4])
    assert calls == []


def test_cli_images_resume_after_an_interrupt(tmp_path, capsys, monkeypatch):
    spec = NETS["flatten"]
    X = _images(14, 3)
    np.save(tmp_path / "X.npy", X)
    ref = infntk.Network(parse_layers(spec)).kernels(X)
    args = ["kernel", str(tmp_path / "X.npy"), "--out", str(tmp_path / "K.npy"), "--layers",
            spec, "--block-rows", "3", "--no-progress"]
    monkeypatch.setenv("INFNTK_PROGRESS_INTERVAL", "0")    # record every block at once
    orig = ConvEngine.block

    def interrupted(self, plan, X1, X2, G, row0, *rest):
        if row0 >= 6:             # blocks 0:3 and 3:6 done, then Ctrl-C
            raise KeyboardInterrupt
        return orig(self, plan, X1, X2, G, row0, *rest)

    monkeypatch.setattr(ConvEngine, "block", interrupted)
    assert main(args) == 130
    assert "resume" in capsys.readouterr().err
    assert not (tmp_path / "K_ntk.npy").exists()       # no final file that looks complete
    monkeypatch.setattr(ConvEngine, "block", orig)
    rerun = []
    monkeypatch.setattr(ConvEngine, "block",
                        lambda self, plan, X1, X2, G, row0, *rest:
                        (rerun.append(row0), orig(self, plan, X1, X2, G, row0, *rest))[1])
    assert main(args) == 0
    assert "resuming" in capsys.readouterr().err
    assert 0 not in rerun and 3 not in rerun           # the blocks on disk were skipped
    assert np.array_equal(np.load(tmp_path / "K_ntk.npy"), ref.ntk)
    assert np.array_equal(np.load(tmp_path / "K_nngp.npy"), ref.nngp)
