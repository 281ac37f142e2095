"""The colab/ notebooks execute headless, top to bottom, at their tiny size.

Each notebook runs in a fresh ``python3`` kernel of this interpreter (nbclient) with
``JAXAR_NOTEBOOK_SIZE=tiny``; any cell error fails the test. Notebooks are stored without
outputs and must carry the ``SIZE`` switch.
"""

import os
import pathlib
import sys

import pytest

COLAB = pathlib.Path(__file__).resolve().parents[1] / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))
CELL_TIMEOUT_S = 300


def _read(path):
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(path, as_version=4)


def test_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    expected = {
        "quickstart",
        "recurrences",
        "axial",
        "masked_diffusion",
        "diffusion_heads",
        "sharding_tpu",
        "decoding",
    }
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_has_size_switch(path):
    nb = _read(path)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert 'SIZE = "tiny"' in code and "JAXAR_NOTEBOOK_SIZE" in code, path.name
    assert "google.colab" in code and "JAXAR_GIT_URL" in code, path.name
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name}: store notebooks without outputs"
            )


# executed in the fast suite; the others run with -m slow (each 15-45 s on 2 cores)
FAST_NOTEBOOKS = {"quickstart", "decoding", "visual_tokens"}


@pytest.mark.parametrize(
    "path",
    [p if p.stem in FAST_NOTEBOOKS else pytest.param(p, marks=pytest.mark.slow) for p in NOTEBOOKS],
    ids=lambda p: p.stem,
)
def test_notebook_executes(path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = _read(path)
    monkeypatch.setenv("JAXAR_NOTEBOOK_SIZE", "tiny")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    # the kernel must run this interpreter (the one with jaxar installed)
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
