"""Test setup: 8 fake CPU devices before JAX starts, float64 available, nightly option, compiled
programs released after each test module."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


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
