"""Who owns which task: the map between a party's own rows and the tasks' order.

Party p (position p on the mesh axis) owns the tasks ``t`` with ``owners[t] == p``, in their
order in ``tasks``; every party owns the same number k of them, so that the per-party program
is one SPMD program. Vectors gathered from the parties arrive *party-major* (party 0's k
entries, then party 1's, ...); :attr:`Parties.position` puts them back in task order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


@dataclasses.dataclass(frozen=True)
class Parties:
    """The task → party map of a federated step.

    Attributes:
      owners: ``owners[t]`` is the party (mesh position) that holds task t's data and head.
      axis_name: the mesh axis whose positions are the parties.
    """

    owners: tuple[int, ...]
    axis_name: str = "party"

    def __post_init__(self):
        owners = tuple(int(p) for p in self.owners)
        object.__setattr__(self, "owners", owners)
        if not owners or min(owners) < 0:
            raise ValueError(f"owners must be non-negative party indices, got {owners}.")
        counts = np.bincount(owners, minlength=max(owners) + 1)
        if np.any(counts != counts[0]):
            raise ValueError(
                f"Every party must own the same number of tasks (one SPMD program); owners "
                f"{owners} give the parties {counts.tolist()} tasks."
            )

    @property
    def num_tasks(self) -> int:
        return len(self.owners)

    @property
    def num_parties(self) -> int:
        return max(self.owners) + 1

    @property
    def tasks_per_party(self) -> int:
        """k, the tasks each party owns."""
        return self.num_tasks // self.num_parties

    @property
    def table(self) -> np.ndarray:
        """``[N, k]``: row p lists party p's tasks in task order."""
        return np.argsort(np.asarray(self.owners), kind="stable").reshape(self.num_parties, -1)

    @property
    def position(self) -> np.ndarray:
        """``[T]``: where task t sits in a party-major gathered vector."""
        return np.argsort(self.table.reshape(-1), kind="stable")

    def check_axis(self) -> None:
        """Raises unless the mapped axis has one position per party (at trace time)."""
        size = lax.axis_size(self.axis_name)
        if size != self.num_parties:
            raise ValueError(f"owners name {self.num_parties} parties, but the mesh axis "
                             f"{self.axis_name!r} has {size} devices (one per party).")

    def own(self, vector: jax.Array) -> jax.Array:
        """This party's entries ``[k]`` of a task-ordered ``[T]`` vector."""
        rows = jnp.asarray(self.table)[lax.axis_index(self.axis_name)]
        return vector[rows]

    def gather(self, local: jax.Array) -> jax.Array:
        """Every party's ``[k, ...]`` rows as one ``[T, ...]`` array in task order (an
        all-gather of ``T·(row size)`` elements)."""
        gathered = lax.all_gather(local, self.axis_name)
        gathered = gathered.reshape(self.num_tasks, *local.shape[1:])
        return gathered[self.position]

    def task_gram(self, party_gram: jax.Array) -> jax.Array:
        """A party-major ``[T, T]`` Gram matrix in task order (rows and columns)."""
        index = self.position
        return party_gram[index][:, index]


def as_parties(owners: Sequence[int], axis_name: str, num_tasks: int) -> Parties:
    """:class:`Parties` for ``num_tasks`` tasks; raises when ``owners`` has another length."""
    if len(owners) != num_tasks:
        raise ValueError(f"owners must give a party for each of the {num_tasks} tasks, got "
                         f"{len(owners)} entries.")
    return Parties(tuple(owners), axis_name)
