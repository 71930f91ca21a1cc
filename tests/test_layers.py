"""The layers hold at import time: only mito.report draws, so importing the compute packages loads no matplotlib.

(import-linter checks the import graph in CI, `.ci/run`; this checks what a fresh interpreter actually loads.)
"""

import subprocess
import sys
from pathlib import Path

import pytest

CODE = """
import sys
import mito.heads, mito.bench, mito.extract, mito.store, mito.wsi, mito.backbones, mito.datasets, mito.interop, mito.core
print(sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("matplotlib", "mito")} - {"mito"}))
print("mito.cache" in sys.modules, "mito.report" in sys.modules)
"""


@pytest.mark.slow
def test_compute_packages_load_no_matplotlib_and_no_report() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "False False"]


def test_mito_cache_is_gone() -> None:
    """The store lives in mito.store; no mito.cache shim is left behind (looked up on disk: an editable install of
    another checkout could still answer ``import mito.cache``)."""
    import mito

    assert not list((Path(mito.__file__).parent / "cache").glob("**/*.py"))
    assert (Path(mito.__file__).parent / "store" / "store.py").is_file()


NO_TORCH = """
import sys
import numpy as np
import mito.heads, mito.bench, mito.bench.rows
from mito.heads import make_head
print("import", "torch" in sys.modules)
rng = np.random.default_rng(0)
X, y = rng.normal(size=(60, 8)).astype(np.float32), np.repeat(["a", "b"], 30)
for name in ("knn", "logreg", "lightgbm"):
    p = make_head(name, seed=0).fit(X[:40], y[:40], eval_set=(X[40:], y[40:])).predict_proba(X[40:])
    assert p.shape == (20, 2), p.shape
print("fit", "torch" in sys.modules)
make_head("mlp")
print("mlp", "torch" in sys.modules)
"""


def test_heads_and_bench_load_torch_only_for_torch_heads() -> None:
    """Issue 20 item 5: importing mito.heads or mito.bench (as every bench worker does to unpickle its job) and fitting
    knn, logreg or lightgbm never loads torch; the first torch head does."""
    out = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["import False", "fit False", "mlp True"]
