"""Execute the example notebooks in place, storing their outputs, with every plotly figure also
rendered as a PNG so that it shows in any viewer (GitHub, nbconvert), not only in Jupyter.

    make notebooks          # or: python scripts/run_notebooks.py [examples/05_*.ipynb ...]

The PNGs need kaleido (``pip install -e ".[notebooks]"``) and a Chrome or Chromium on the
machine; the test suite runs the notebooks without either.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    # interactive figures for Jupyter, and a static PNG beside each for everything else
    os.environ["PLOTLY_RENDERER"] = "plotly_mimetype+png"
    with tempfile.TemporaryDirectory() as scratch:
        client = NotebookClient(
            notebook, kernel_name="python3", timeout=900, resources={"metadata": {"path": scratch}}
        )
        started = time.perf_counter()
        client.execute()
    nbformat.write(notebook, path)
    print(f"{path.name}: {time.perf_counter() - started:.0f} s")


def needs_circuits(path: Path) -> bool:
    """A notebook that runs in the circuits environment (circuit-tracer) says so in its metadata."""
    metadata = nbformat.read(path, as_version=4).metadata.get("mxd_saelens", {})
    return metadata.get("environment") == "circuits"


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]] or sorted(EXAMPLES.glob("*.ipynb"))
    has_circuits = importlib.util.find_spec("circuit_tracer") is not None
    for path in paths:
        if needs_circuits(path) and not has_circuits:
            print(
                f"{path.name}: skipped, it runs in the circuits environment (make notebooks runs it)"
            )
            continue
        run(path)


if __name__ == "__main__":
    main()
