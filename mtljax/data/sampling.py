"""Task sampling for alternating (one task per step) and multi-input training.

With datasets of sizes ``n_t``, task ``t`` is drawn at each step with probability

* ``"proportional"``: ``p_t = n_t / Σ_s n_s`` (every sample is visited at the same rate);
* ``"temperature"``: ``p_t ∝ n_t^{1/τ}``; ``τ = 1`` is proportional, ``τ → ∞`` uniform, and
  ``τ > 1`` up-samples small tasks (Arivazhagan et al., "Massively Multilingual Neural Machine
  Translation in the Wild", 2019, arXiv:1907.05019; the T5 paper's "temperature-scaled mixing",
  Raffel et al., JMLR 2020, arXiv:1910.10683);
* ``"uniform"``: ``p_t = 1 / T``;
* ``"round_robin"``: deterministic cycle ``t = k mod T`` at step ``k`` (long-run frequency
  ``1 / T``).

Draws are a pure function of ``(seed, step)``: the choices of steps ``[kB, (k+1)B)`` come from
``numpy.random.default_rng([seed, k])`` with a block size ``B``, so :meth:`TaskSampler.restore`
resumes the exact sequence.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

SCHEMES = ("proportional", "temperature", "uniform", "round_robin")
BLOCK = 1024


def task_probabilities(
    sizes: Mapping[str, int], scheme: str = "proportional", *, temperature: float = 1.0
) -> dict[str, float]:
    """The sampling probability of each task (see the module docstring).

    Args:
      sizes: ``{task: number of training samples n_t}``, positive.
      scheme: one of ``SCHEMES``.
      temperature: ``τ > 0`` for the ``"temperature"`` scheme.

    Returns:
      ``{task: p_t}``, summing to 1.

    Example:
      >>> round(task_probabilities({"a": 300, "b": 100}, "temperature", temperature=2.0)["a"], 4)
      0.634
    """
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown sampling scheme {scheme!r}; known: {list(SCHEMES)}.")
    if not sizes:
        raise ValueError("Task sampling needs at least one task.")
    n = np.array([sizes[t] for t in sizes], np.float64)
    if np.any(n <= 0) or not np.all(np.isfinite(n)):
        raise ValueError(f"Dataset sizes must be positive, got {dict(sizes)}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    if scheme in ("uniform", "round_robin"):
        weights = np.ones_like(n)
    else:
        tau = temperature if scheme == "temperature" else 1.0
        # n^{1/τ} computed as exp(log n / τ - max): no overflow for large n and small τ.
        log_w = np.log(n) / tau
        weights = np.exp(log_w - log_w.max())
    p = weights / weights.sum()
    return {t: float(pt) for t, pt in zip(sizes, p, strict=True)}


class TaskSampler(Iterator[str]):
    """An endless, seeded, resumable stream of task names.

    Args:
      sizes: ``{task: n_t}``; the order of the mapping is the task order.
      scheme: one of ``SCHEMES``.
      seed: seeds the draws.
      temperature: ``τ`` of the ``"temperature"`` scheme.

    Example:
      >>> s = TaskSampler({"a": 1, "b": 1}, "round_robin", seed=0)
      >>> [next(s) for _ in range(3)]
      ['a', 'b', 'a']
    """

    def __init__(
        self,
        sizes: Mapping[str, int],
        scheme: str = "proportional",
        *,
        seed: int,
        temperature: float = 1.0,
    ):
        self.probabilities = task_probabilities(sizes, scheme, temperature=temperature)
        self.names = tuple(sizes)
        self.scheme = scheme
        self.seed = int(seed)
        self._p = np.array([self.probabilities[t] for t in self.names])
        self._step = 0
        self._block_index, self._block = -1, np.empty(0, np.int64)

    def _choice(self, step: int) -> int:
        if self.scheme == "round_robin":
            return step % len(self.names)
        block = step // BLOCK
        if block != self._block_index:
            rng = np.random.default_rng([self.seed, block])
            self._block_index = block
            self._block = rng.choice(len(self.names), size=BLOCK, p=self._p)
        return int(self._block[step % BLOCK])

    def __next__(self) -> str:
        name = self.names[self._choice(self._step)]
        self._step += 1
        return name

    def state(self) -> dict[str, int]:
        """``{"step", "seed"}``: the draws consumed so far."""
        return {"step": self._step, "seed": self.seed}

    def restore(self, state: Mapping[str, int]) -> None:
        """Resumes after the draws counted in ``state`` (from :meth:`state`)."""
        if int(state["seed"]) != self.seed:
            raise ValueError(
                f"The saved sampler used seed {int(state['seed'])}, this one seed {self.seed}."
            )
        if int(state["step"]) < 0:
            raise ValueError(f"Invalid sampler state {dict(state)}.")
        self._step = int(state["step"])
