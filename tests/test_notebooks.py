"""Notebooks are committed without outputs, and each runs top to bottom with tiny parameters injected.

Parameters are injected papermill-style: a cell of assignments after the cell tagged ``parameters``. Kernel start-up
and the anomalib import cost ~10 s each, so two kernels (one thread each) run the notebooks between them; before a
notebook, ``%reset -f`` empties the kernel's namespace (a missing import still fails; only ``sys.modules`` is
shared) and the working directory is set to the notebook's own temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .conftest import REPO_ROOT, SHARED_DATA

# Executes every notebook.
pytestmark = pytest.mark.slow

if TYPE_CHECKING:
    from nbformat import NotebookNode

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the dev extra (nbformat, nbclient, ipykernel)")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need the dev extra (nbformat, nbclient, ipykernel)")

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "anomalib-simplenet-tests"
TINY = {"DATA": "synthetic", "N_TRAIN": 12, "IMAGE_SIZE": 64, "EPOCHS": 1}
REAL_DATA_JOB = "03_unet_ae.ipynb on magnetic_tile"
# Relative run time (CPU seconds, measured) by notebook-name prefix: the longest are queued first.
COST = {"04": 50, "01": 34, "02": 22, "05": 22, "03": 20}
# Smaller models than the notebooks' defaults, by notebook-name prefix.
TINY_BY_NOTEBOOK = {
    "01": {},  # its defaults: efficientnet_lite0 with the packaged ImageNet weights (small and offline)
    "02": {"THROUGHPUT_SECONDS": 0.2},  # cost table: teacher reference vs distilled student
    "03": {"BASE_CHANNELS": 8, "DEPTH": 3, "LATENT_DIM": 16},
    "04": {"THROUGHPUT_SECONDS": 0.2},  # the notebook's own model: DistillClassifier, packaged lite0 teacher
}


def _parameters(notebook: NotebookNode) -> tuple[int, set[str]]:
    """Index of the ``parameters`` cell and the names it assigns."""
    for index, cell in enumerate(notebook.cells):
        if "parameters" in cell.metadata.get("tags", []):
            return index, set(re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=", cell.source, flags=re.MULTILINE))
    msg = "no cell tagged 'parameters'"
    raise AssertionError(msg)


def _inject(path: Path, parameters: dict[str, object]) -> NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    index, names = _parameters(notebook)
    unknown = set(parameters) - names
    assert not unknown, f"{path.name}: parameters cell does not define {sorted(unknown)}"
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    cell.pop("id", None)
    notebook.cells.insert(index + 1, cell)
    return notebook


def _tiny_parameters(path: Path, out: Path) -> dict[str, object]:
    names = _parameters(nbformat.read(path, as_version=4))[1]
    parameters = {**TINY, **TINY_BY_NOTEBOOK.get(path.name[:2], {}), "OUT": str(out), "DATA_ROOT": str(SHARED_DATA)}
    return {name: value for name, value in parameters.items() if name in names}


def _fresh_start(notebook: NotebookNode, cwd: Path) -> NotebookNode:
    """Prepend a cell that empties the (reused) kernel's namespace and enters ``cwd``."""
    cell = nbformat.v4.new_code_cell(f"%reset -f\nimport os\nos.chdir({str(cwd)!r})\ndel os")
    cell.pop("id", None)
    notebook.cells.insert(0, cell)
    return notebook


async def _worker(jobs: asyncio.Queue, results: dict[str, tuple[str | None, float]]) -> None:
    """One kernel; runs queued ``(name, notebook)`` jobs until the queue is empty."""
    from jupyter_client.manager import AsyncKernelManager

    manager = AsyncKernelManager(kernel_name=KERNEL)
    await manager.start_kernel()
    try:
        while not jobs.empty():
            name, notebook = jobs.get_nowait()
            client = nbclient.NotebookClient(notebook, km=manager, timeout=600)
            start = time.perf_counter()
            try:
                await client.async_execute()
                results[name] = (None, time.perf_counter() - start)
            except Exception as error:  # noqa: BLE001 - reported by the test of that notebook
                results[name] = (f"{type(error).__name__}: {error}", time.perf_counter() - start)
            finally:
                if client.kc is not None:
                    client.kc.stop_channels()
    finally:
        await manager.shutdown_kernel(now=True)


def _run_all(jobs: list[tuple[str, NotebookNode]], kernels: int = 2) -> dict[str, tuple[str | None, float]]:
    """Run the jobs (longest first: put them first) on ``kernels`` kernels; name → (error or None, seconds)."""
    async def run() -> dict[str, tuple[str | None, float]]:
        queue: asyncio.Queue = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        results: dict[str, tuple[str | None, float]] = {}
        await asyncio.gather(*(_worker(queue, results) for _ in range(min(kernels, len(jobs)))))
        return results

    return asyncio.run(run())


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[str | None, float]]]:
    """Every notebook on tiny synthetic data, and the UNetAE one on a few real images when they exist.

    The kernel spec points at this interpreter (not whatever ``python3`` kernel the machine has); one thread each.
    """
    folder = tmp_path_factory.mktemp("jupyter")
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    jobs = []
    for path in sorted(NOTEBOOKS, key=lambda p: COST.get(p.name[:2], 1), reverse=True):
        cwd = tmp_path_factory.mktemp(path.stem)
        jobs.append((path.name, _fresh_start(_inject(path, _tiny_parameters(path, cwd / "out")), cwd)))
    if (SHARED_DATA / "magnetic_tile").is_dir():
        (path,) = [p for p in NOTEBOOKS if p.name.startswith("03")]
        cwd = tmp_path_factory.mktemp("real_data")
        parameters = {**_tiny_parameters(path, cwd / "out"), "DATA": "magnetic_tile", "N_TRAIN": 8}
        jobs.append((REAL_DATA_JOB, _fresh_start(_inject(path, parameters), cwd)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(folder))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            patch.setenv(name, "1")
        yield _run_all(jobs)


def test_there_are_notebooks() -> None:
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs"
    index, names = _parameters(notebook)
    assert index == next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code"), "parameters come first"
    assert {"DATA", "DATA_ROOT", "OUT"} <= names
    assert re.search(r'^DATA = "synthetic"', notebook.cells[index].source, flags=re.MULTILINE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_tiny_synthetic_data(path: Path, executed: dict[str, tuple[str | None, float]]) -> None:
    error, seconds = executed[path.name]
    assert error is None, f"{path.name} failed after {seconds:.0f} s:\n{error[-4000:]}"


def test_unet_notebook_runs_on_real_data(executed: dict[str, tuple[str | None, float]]) -> None:
    """``DATA = "magnetic_tile"``: the UNetAE notebook on a small subset of the real set (grayscale, varying sizes)."""
    if REAL_DATA_JOB not in executed:
        pytest.skip(f"real data not found at {SHARED_DATA}")
    error, seconds = executed[REAL_DATA_JOB]
    assert error is None, f"{REAL_DATA_JOB} failed after {seconds:.0f} s:\n{error[-4000:]}"
