"""Every registered method on the MultiDigits demo config: it trains, and every loss goes down.

Command::

    python -m experiments.all_methods --workdir runs/all_methods          # ~5 min on 2 cores

Each method runs the config of :mod:`mtljax.configs.multidigits` (shortened to
``--steps``) with its registry defaults, plus the hyper-parameters a method cannot default
(:data:`REQUIRED`). A method *passes* when training finishes with finite losses and, for every
task, the mean training loss over the last tenth of the logged steps is below the mean over
the first tenth. Methods defined only for more tasks than MultiDigits has (T = 2) are listed
as not applicable. Prints a table and writes ``results.json`` under ``--workdir``; the exit
status is non-zero if any applicable method fails.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from mtljax.configs import multidigits
from mtljax.methods import method_names
from mtljax.metrics_log import read_jsonl
from mtljax.run import run
from mtljax.run.experiment import load_data
from mtljax.tables import format_table

# Hyper-parameters without a default, for T = 2 tasks.
REQUIRED = {
    "fixed": {"weights": [0.5, 1.5]},
    "constant": {"weights": [0.5, 1.5]},
    "stch": {"warmup_steps": 50},
}
# Robust aggregators need T ≥ 3: Krum scores each gradient by its T − f − 2 nearest others,
# the trimmed mean drops the largest and smallest value of each coordinate.
NEEDS_MORE_TASKS = {"krum": 3, "trimmed_mean": 3}


def loss_drop(records: list[dict], tasks: list[str]) -> dict[str, tuple[float, float]]:
    """Per task, the mean training loss over the first and the last tenth of logged steps."""
    train = [r for r in records if "losses" in r]
    tenth = max(len(train) // 10, 1)
    return {
        t: (
            float(np.mean([r["losses"][t] for r in train[:tenth]])),
            float(np.mean([r["losses"][t] for r in train[-tenth:]])),
        )
        for t in tasks
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/all_methods")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--methods", nargs="+", default=method_names())
    args = parser.parse_args(argv)

    base = multidigits.get_config().replace(
        {"schedule.steps": args.steps, "schedule.eval_every": args.steps}
    )
    data = load_data(base)
    tasks = list(data.tasks.names)
    rows, results, failed = [], {}, []
    for name in args.methods:
        if NEEDS_MORE_TASKS.get(name, 0) > len(tasks):
            rows.append((name, "n/a", "", "", f"needs T ≥ {NEEDS_MORE_TASKS[name]}"))
            continue
        config = base.replace({
            "method.name": name,
            "method.kw": REQUIRED.get(name, {}),
            "workdir": os.path.join(args.workdir, name),
        })
        try:
            summary = run(config, data=data, progress=False, overwrite=True)
        except Exception as err:  # report every method, then fail
            failed.append(name)
            rows.append((name, "FAIL", "", "", f"{type(err).__name__}: {err}"[:80]))
            continue
        drops = loss_drop(read_jsonl(os.path.join(config.workdir, "metrics.jsonl")), tasks)
        ok = all(np.isfinite(a) and np.isfinite(b) and b < a for a, b in drops.values())
        if not ok:
            failed.append(name)
        accuracy = " / ".join(f"{summary['test'][t]['accuracy']:.3f}" for t in tasks)
        ratios = " / ".join(f"{b / a:.3f}" for a, b in drops.values())
        rows.append((name, "ok" if ok else "FAIL", accuracy, ratios,
                     f"{summary['steps_per_s']:.0f} steps/s"))
        results[name] = {"passed": ok, "loss_first_last": drops, "test": summary["test"],
                         "steps_per_s": summary["steps_per_s"]}

    print(f"\nMultiDigits, {args.steps} steps per method (tasks {' / '.join(tasks)})\n")
    print(format_table(("method", "result", "test accuracy", "last/first loss", "speed"), rows))
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    if failed:
        print(f"\nFailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
