"""Test setup: 8 fake CPU devices before JAX starts, float64 available, nightly option, compiled
programs shared on disk within the session and released from memory after each test module."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


def _share_compiled_programs():
    """A compilation cache on disk for this test session: many tests build the same step
    afresh (a new closure, the same program), and pytest-xdist workers share what the others
    compiled. The first process to get here makes the folder (workers inherit it through the
    environment) and removes it when it exits."""
    folder = os.environ.get("MTLJAX_TEST_COMPILE_CACHE")
    if folder is None:
        folder = tempfile.mkdtemp(prefix="mtljax-test-xla-")
        os.environ["MTLJAX_TEST_COMPILE_CACHE"] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_share_compiled_programs()


def pytest_addoption(parser):
    parser.addoption("--nightly", action="store_true", help="run the large fuzzing runs")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--nightly"):
        return
    skip = pytest.mark.skip(reason="nightly-size run; pass --nightly")
    for item in items:
        if "nightly" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each module. Every CPU executable keeps its own memory
    mappings; a whole-suite run in one process reached the kernel's limit (vm.max_map_count,
    65,530) and XLA crashed with a segmentation fault in whichever test compiled next."""
    yield
    jax.clear_caches()


@pytest.fixture(scope="session")
def small_data():
    """MultiDigits with one pair per source image: the small dataset of the runner tests."""
    from mtljax.data.registry import load_dataset

    return load_dataset("multidigits", pairs_per_image=1)


@pytest.fixture
def cached_data(monkeypatch, small_data):
    """Every run in the test reuses the small dataset instead of rebuilding it."""
    from mtljax.run import experiment

    monkeypatch.setattr(experiment, "load_data", lambda config: small_data)
    return small_data
