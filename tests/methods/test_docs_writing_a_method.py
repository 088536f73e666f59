"""docs/writing_a_method.md stays true: its Python blocks run, in order, as written.

A block whose first line is ``# file: NAME.py`` is a config file: it is written to NAME.py and
loaded as ``mtljax run`` loads it (which registers its method); the other blocks run in one
namespace after it.
"""

import re
from pathlib import Path

import pytest

import mtljax.configs
from mtljax.methods import REGISTRY

PAGE = Path(__file__).parents[2] / "docs" / "writing_a_method.md"


@pytest.fixture
def registry():
    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)


def test_writing_a_method_page_runs(tmp_path, registry):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text("utf-8"), re.S)
    files = [b for b in blocks if b.startswith("# file: ")]
    assert len(files) == 1 and len(blocks) >= 3
    name = files[0].splitlines()[0].removeprefix("# file: ").strip()
    (tmp_path / name).write_text(files[0], "utf-8")
    config = mtljax.configs.load(str(tmp_path / name))
    assert config.method.name == "equal_norm" and "equal_norm" in mtljax.method_names()
    mtljax.configs.load(str(tmp_path / name))  # loading it again re-registers (overwrite=True)
    namespace = {}
    for block in blocks:
        if block not in files:
            exec(compile(block, str(PAGE), "exec"), namespace)  # noqa: S102 - the page's code
