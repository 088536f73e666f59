"""The runner's metrics log: what it writes and what it warns about."""

import warnings

import numpy as np
import pytest

import mtljax
from mtljax.run.log import RunLog


def metrics(update_norm, skipped=False):
    return {"losses": np.array([0.5, 0.25]), "weights": np.array([0.5, 0.5]),
            "nonfinite": np.array([False, False]), "present": np.array([True, True]),
            "skipped": np.array(skipped), "update_norm": np.array(update_norm),
            "aux": {}}


def test_an_exactly_zero_update_is_warned_once(tmp_path):
    """MGDA's min-norm point is 0 when a task's gradient is 0: the run goes on, said once."""
    log = RunLog(tmp_path, mtljax.Tasks(["a", "b"]), log_every=1, nonfinite="skip_step",
                 method="mgda", steps=4, resumed_from=0, tensorboard=False, progress=False)
    log.step(1, metrics(0.3))
    log.step(2, metrics(0.0, skipped=True))  # a skipped step moves nothing anyway
    log.flush()
    log.step(3, metrics(0.0))
    with pytest.warns(UserWarning, match="step 3: the update of method 'mgda' is exactly zero"):
        log.flush()
    log.step(4, metrics(0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log.flush()  # warned once per run
