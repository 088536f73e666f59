"""Where a train step's time goes: XLA's own per-op profile of one benchmark step.

    python experiments/profile_step.py --tasks 40 --method upgrad
    python experiments/profile_step.py --tasks 10 --method jacobian_mean --strategy vmap
    python experiments/profile_step.py --tasks 40 --method upgrad --engine gramian

Builds the step of ``experiments/benchmark.py`` (same workloads), runs it under
``jax.profiler.trace`` and prints, per XLA op (fusion, dot, copy, ...), the time summed over
the runtime's worker threads, with the op's result shape. On CPU the sum over threads exceeds
the wall time when ops run on several cores at once; the ratio is printed as "cores busy".
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
from pathlib import Path

import jax
import optax

sys.path.insert(0, str(Path(__file__).parent))
import benchmark  # noqa: E402

import mtljax  # noqa: E402

WAIT_EVENT = "ThunkExecutor::Execute (wait for completion)"


def result_shapes(hlo_text: str) -> dict[str, str]:
    """``{op name: result shape}`` from optimised HLO text."""
    shapes = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+)", line)
        if match:
            shapes[match[1]] = match[2]
    return shapes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(benchmark.WORKLOADS), default="hps-mlp")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--method", default="upgrad")
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--engine", help="make_train_step's engine (default: not passed)")
    parser.add_argument("--calls", type=int, default=3, help="profiled calls (after 2 warm-ups)")
    parser.add_argument("--top", type=int, default=15, help="ops to list")
    args = parser.parse_args(argv)

    shape = benchmark.SHAPES[args.workload]
    tasks, loss, params, batch = benchmark.WORKLOADS[args.workload](args.tasks, shape)
    method = benchmark.build_method(args.method, args.tasks)
    opt = optax.sgd(benchmark.LEARNING_RATES[args.workload])
    extra = {} if args.engine is None else {"engine": args.engine}
    step = jax.jit(mtljax.make_train_step(loss, tasks, method, opt, strategy=args.strategy,
                                          diagnostics=False, **extra))
    state = mtljax.init_train_state(params, opt, method)
    compiled = step.lower(state, batch).compile()
    shapes = result_shapes(compiled.as_text())
    for _ in range(2):
        jax.block_until_ready(compiled(state, batch))
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(args.calls):
                jax.block_until_ready(compiled(state, batch))
        (xspace,) = Path(trace_dir).rglob("*.xplane.pb")
        profile = jax.profiler.ProfileData.from_file(str(xspace))

    per_op, wall_ns = collections.Counter(), 0
    for plane in profile.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name == WAIT_EVENT:
                    wall_ns += event.duration_ns
                elif event.name in shapes:
                    per_op[event.name] += event.duration_ns
    calls = args.calls
    busy = sum(per_op.values())
    print(f"{args.workload}, T={args.tasks}, {args.method}, strategy={args.strategy}, "
          f"engine={args.engine or 'default'} "
          f"({jax.default_backend()})")
    print(f"step wall time {wall_ns / calls / 1e6:.1f} ms; ops {busy / calls / 1e6:.1f} ms "
          f"summed over threads; cores busy {busy / max(wall_ns, 1):.2f}")
    kinds = collections.Counter()
    for name, ns in per_op.items():
        kinds[re.sub(r"[.\d]+$", "", name)] += ns
    print("\nby kind (ms per step, summed over threads):")
    for kind, ns in kinds.most_common(8):
        print(f"  {ns / calls / 1e6:8.1f}  {kind}")
    print("\ntop ops:")
    for name, ns in per_op.most_common(args.top):
        print(f"  {ns / calls / 1e6:8.1f}  {name:32s} {shapes[name]}")


if __name__ == "__main__":
    main()
