"""A non-editable install works from any directory: the configs ship inside the package."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mtljax._version import __version__

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_installed_package_runs_a_shipped_config_elsewhere(tmp_path):
    """``pip install .`` (no editable link), then ``mtljax run multidigits`` from another folder.

    The installed package also carries ``__version__`` (the metadata's version, read from
    ``mtljax/_version.py``), ``py.typed`` and the LICENSE.

    The build runs offline (``--no-build-isolation``, the dev extra's setuptools) on a copy of
    the sources, so the working tree gets no ``build/`` folder; the dependencies are the test
    environment's own (``--no-deps`` into ``--target``, put first on ``PYTHONPATH``).
    """
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("building the wheel needs setuptools >= 77 (the dev extra)")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "mtljax", source / "mtljax", ignore=shutil.ignore_patterns("__pycache__")
    )
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(target), JAX_PLATFORMS="cpu", CI="1")
    script = target / "bin" / "mtljax"
    where, version = subprocess.run(
        [sys.executable, "-c",
         "import mtljax, mtljax.configs; print(mtljax.configs.__file__, mtljax.__version__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert Path(where).is_relative_to(target)
    assert version == __version__
    assert (target / "mtljax" / "py.typed").is_file()
    (licence,) = target.glob(f"mtljax-{__version__}.dist-info/licenses/LICENSE")
    assert licence.read_text() == (ROOT / "LICENSE").read_text()
    done = subprocess.run(
        [str(script), "run", "multidigits", "--set", "schedule.steps=20", "--workdir", "out"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((elsewhere / "out" / "summary.json").read_text())
    assert summary["config"]["schedule"]["steps"] == 20 and summary["best_step"] == 20
