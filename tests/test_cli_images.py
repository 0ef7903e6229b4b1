"""`infntk kernel --layers "conv(...) ..."` on image files (n, H, W, C): the kernels equal the
Network's, outputs are written atomically, inputs are never overwritten, errors are one line."""
import numpy as np

import infntk
from infntk.cli import main
from infntk.layer_spec import parse_layers

SPEC = "conv(3,circular,1.5,0.1) relu avgpool(2) conv(3,same,1.5,0.1) relu gap dense(1.5,0.1)"


def test_image_kernels_symmetric_and_cross(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((4, 4, 4, 2)), rng.standard_normal((3, 4, 4, 2))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "Y.npy", Y)
    net = infntk.Network(parse_layers(SPEC))
    assert main(["kernel", str(tmp_path / "X.npy"), "--out", str(tmp_path / "K.npz"),
                 "--layers", SPEC, "--no-progress"]) == 0
    k = net.kernels(X)
    with np.load(tmp_path / "K.npz") as z:
        assert np.array_equal(z["nngp"], k.nngp) and np.array_equal(z["ntk"], k.ntk)
    assert main(["kernel", str(tmp_path / "X.npy"), "--y", str(tmp_path / "Y.npy"), "--out",
                 str(tmp_path / "C.npy"), "--kernel", "ntk", "--layers", SPEC,
                 "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp_path / "C.npy"), net.kernels(X, Y).ntk)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_image_errors_are_one_line(tmp_path, capsys):
    np.save(tmp_path / "R.npy", np.ones((3, 5)))
    assert main(["kernel", str(tmp_path / "R.npy"), "--out", str(tmp_path / "K.npz"),
                 "--layers", SPEC]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4-D" in err[0]
    np.save(tmp_path / "I.npy", np.ones((2, 4, 4, 1)))
    assert main(["kernel", str(tmp_path / "I.npy"), "--out", str(tmp_path / "I.npy"),
                 "--kernel", "ntk", "--force", "--layers", SPEC]) == 2
    assert "input" in capsys.readouterr().err
    assert np.array_equal(np.load(tmp_path / "I.npy"), np.ones((2, 4, 4, 1)))
    assert main(["kernel", str(tmp_path / "I.npy"), "--out", str(tmp_path / "K.npz"),
                 "--layers", "conv(3,diagonal) relu gap dense"]) == 2
    assert "padding" in capsys.readouterr().err
