"""The README's examples run as written and print what the README shows.

Every fenced ``python`` block of README.md runs, in order, in one namespace (as a reader pastes
them into one session). Blocks in any other language (``bash``, ``text``) are not run. A
``text`` block right after a ``python`` block is that block's expected output; it is compared
token by token, numbers with a tolerance (5% plus one unit of the last digit shown), so that
a different CPU or XLA version does not fail the test but a wrong result does.

The blocks run in a fresh interpreter without this suite's settings (float64, 8 fake devices),
so they see what a reader's session sees.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# A number (as Python and NumPy print them), or any other single non-space character.
TOKEN = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|\S")
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")

RUNNER = """
import contextlib, io, json, sys
blocks = json.load(sys.stdin)
namespace, outputs = {"__name__": "__readme__"}, []
for line, code in blocks:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md, block at line {line}", "exec"), namespace)
    outputs.append(out.getvalue())
print(json.dumps(outputs))
"""


def readme_blocks(text: str) -> list[tuple[str, int, str]]:
    """``(language, first line, code)`` of every fenced block."""
    return [
        (m.group(1), text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text)
    ]


def matches(got: str, want: str, rtol: float = 0.05) -> bool:
    """Whether ``got`` prints ``want``: same tokens, numbers within ``rtol`` plus one unit of
    the last digit ``want`` shows (whitespace is ignored)."""
    got_tokens, want_tokens = TOKEN.findall(got), TOKEN.findall(want)
    if len(got_tokens) != len(want_tokens):
        return False
    for g, w in zip(got_tokens, want_tokens, strict=True):
        if NUMBER.match(w) and NUMBER.match(g):
            decimals = len(w.split(".")[1]) if "." in w and "e" not in w.lower() else 0
            if abs(float(g) - float(w)) > rtol * abs(float(w)) + 10.0**-decimals:
                return False
        elif g != w:
            return False
    return True


def test_matches_compares_numbers_with_tolerance_and_text_exactly():
    assert matches("[0.5 0.5]\n", "[0.5 0.5]")
    assert matches("{'a': 0.0171}", "{'a': 0.017}")
    assert matches("[1.98 1.5 ]", "[1.98 1.5]")
    assert not matches("{'a': 0.03}", "{'a': 0.017}")
    assert not matches("{'b': 0.017}", "{'a': 0.017}")
    assert not matches("[0.5 0.5 0.5]", "[0.5 0.5]")


def test_every_python_block_runs_and_prints_the_shown_output():
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    code = [(line, body) for lang, line, body in blocks if lang == "python"]
    assert len(code) >= 4, "the README's python examples were not found"
    expected = {
        line: blocks[i + 1][2]
        for i, (lang, line, _) in enumerate(blocks)
        if lang == "python" and i + 1 < len(blocks) and blocks[i + 1][0] == "text"
    }
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    env.update(JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", RUNNER], input=json.dumps(code), env=env, cwd=README.parent,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = dict(zip((line for line, _ in code), json.loads(done.stdout), strict=True))
    for line, want in expected.items():
        assert matches(outputs[line], want), (
            f"README.md block at line {line} printed\n{outputs[line]}\ninstead of\n{want}"
        )


@pytest.mark.parametrize("lang", ["bash", "text"])
def test_blocks_that_do_not_run_are_marked_by_language(lang):
    """Every block names its language, so the runner knows what to skip."""
    languages = {lang for lang, _, _ in readme_blocks(README.read_text(encoding="utf-8"))}
    assert "" not in languages and lang in languages
