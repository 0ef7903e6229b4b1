"""Execute every notebook in notebooks/ fresh (nbclient), in the smoke configuration.

Each notebook checks its own claims with ``assert`` cells (e.g. "wider networks are closer to
the analytic kernel"), so a notebook whose story stops being true fails here. The notebooks run
with ``INFNTK_NOTEBOOK_SMOKE=1`` (smaller widths / fewer seeds, same code path) to keep the suite
fast; without it they run the configuration their text describes. No timing is asserted here
(a loaded machine would fail it): ``python benchmarks/bench_notebooks.py`` prints the time of
each notebook in both configurations. A notebook is skipped only if a module it needs is missing
(``pytest.importorskip``).
"""
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"

#: notebook -> modules it needs beyond numpy/matplotlib
REQUIRES = {
    "01_kernels_vs_angle.ipynb": ["infntk.fcnet", "infntk.empirical", "infntk.training",
                                  "infntk.dynamics"],
    "02_convergence_vs_width.ipynb": ["infntk.convergence", "infntk.empirical"],
    "03_training_dynamics.ipynb": ["infntk.dynamics", "infntk.training"],
    "04_hermite_and_spectrum.ipynb": ["infntk.hermite", "infntk.spectrum"],
    "05_after_kernel.ipynb": ["infntk.after_kernel", "sklearn"],
    "06_finite_width.ipynb": ["infntk.finite_width", "infntk.empirical"],
    "07_theorems.ipynb": ["infntk.learning_curves", "infntk.memorization", "infntk.sensitivity"],
    "08_catapult.ipynb": ["infntk.training", "sklearn"],
    "09_composed.ipynb": ["infntk.network", "infntk.finite", "infntk.convergence"],
    "10_spectral_bias.ipynb": ["infntk.spectral_bias", "infntk.training"],
    "11_cntk_images.ipynb": ["infntk.conv", "sklearn"],
}


def test_every_notebook_is_listed_and_has_no_outputs():
    found = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert found == sorted(REQUIRES)
    for name in found:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, \
                    f"{name}: commit notebooks with outputs cleared"


@pytest.mark.parametrize("name", sorted(REQUIRES))
def test_notebook_runs(name, tmp_path, monkeypatch):
    for mod in REQUIRES[name]:
        pytest.importorskip(mod)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    monkeypatch.setenv("INFNTK_NOTEBOOK_SMOKE", "1")
    # timeout: seconds per cell, only a guard against a hung kernel (not a timing check: a
    # smoke cell takes seconds to ~2 min, on a loaded machine several times that)
    client = nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    # every notebook shows at least one figure
    assert any(out.get("output_type") == "display_data" and "image/png" in out.get("data", {})
               for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs), name
    if os.environ.get("INFNTK_SAVE_EXECUTED"):
        nbformat.write(nb, os.path.join(os.environ["INFNTK_SAVE_EXECUTED"], name))
