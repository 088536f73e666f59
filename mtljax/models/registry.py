"""Architectures by name, for the runner's ``model=`` field (``model_kw`` for their options).

Every builder takes the input shape (no batch axis), the head widths and the runner's trunk
sizes — ``hidden`` (MLP widths: trunks, columns, experts), ``cnn_features`` and ``cnn_out``
(convolutional trunks) — plus the architecture's own keyword options, and returns an NNX model
with its shared parameters under ``shared`` (docs/architectures.md).

The names in :data:`DENSE_ARCHITECTURES` are dense by construction: their heads map every pixel
to ``head_dims[task]`` channels (``[B, H, W, dim]``), for tasks whose ``Task.dense`` is true;
the others give one ``[B, dim]`` output per sample. :func:`check_dense` says which to use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from flax import nnx

from mtljax.models._heads import DenseHead
from mtljax.models.cascade import Cascade
from mtljax.models.cgc import CGC
from mtljax.models.cnn import SmallCNN
from mtljax.models.cross_stitch import CrossStitch
from mtljax.models.dselect_k import DSelectK
from mtljax.models.hps import HardSharing
from mtljax.models.ltb import LTB
from mtljax.models.mlp import MLP
from mtljax.models.mmoe import MMoE
from mtljax.models.mtan import MTAN
from mtljax.models.mtan_dense import DenseMTAN
from mtljax.models.ple import PLE
from mtljax.models.resnet import ResNet
from mtljax.models.segnet import SegNet
from mtljax.models.soft_sharing import SoftSharing


def _mlps(count, input_shape, hidden, rngs):
    return [MLP(math.prod(input_shape), hidden, rngs=rngs) for _ in range(count)]


def _mlp(input_shape, heads, *, hidden, cnn_features, cnn_out, rngs):
    del cnn_features, cnn_out
    return HardSharing(_mlps(1, input_shape, hidden, rngs)[0], heads, rngs=rngs)


def _cnn(input_shape, heads, *, hidden, cnn_features, cnn_out, rngs):
    del hidden
    trunk = SmallCNN(input_shape[-1], features=cnn_features, out_features=cnn_out, rngs=rngs)
    return HardSharing(trunk, heads, rngs=rngs)


def _resnet(input_shape, heads, *, hidden, cnn_features, cnn_out, rngs, grid=3, **kw):
    del hidden
    trunk = ResNet(
        input_shape[-1], features=cnn_features, out_features=cnn_out, grid=grid, rngs=rngs, **kw
    )
    return HardSharing(trunk, heads, rngs=rngs)


def _soft_sharing(input_shape, heads, *, hidden, cnn_features, cnn_out, rngs, **kw):
    del cnn_features, cnn_out
    return SoftSharing(_mlps(len(heads), input_shape, hidden, rngs), heads, rngs=rngs, **kw)


def _cross_stitch(input_shape, heads, *, hidden, cnn_features, cnn_out, rngs, **kw):
    del cnn_features, cnn_out
    return CrossStitch(math.prod(input_shape), hidden, heads, rngs=rngs, **kw)


def _mixture(cls):
    def build(input_shape, heads, *, hidden, cnn_features, cnn_out, rngs, num_experts=4, **kw):
        del cnn_features, cnn_out
        experts = _mlps(int(num_experts), input_shape, hidden, rngs)
        return cls(experts, math.prod(input_shape), heads, rngs=rngs, **kw)

    return build


def _extraction(cls):
    def build(input_shape, heads, *, hidden, cnn_features, cnn_out, rngs, **kw):
        del cnn_features, cnn_out
        return cls(math.prod(input_shape), hidden, heads, rngs=rngs, **kw)

    return build


def _ltb(input_shape, heads, *, hidden, cnn_features, cnn_out, rngs, **kw):
    del cnn_features, cnn_out
    return LTB(math.prod(input_shape), hidden, heads, rngs=rngs, **kw)


def _mtan(input_shape, heads, *, hidden, cnn_features, cnn_out, rngs, **kw):
    del hidden, cnn_out
    return MTAN(input_shape[-1], heads, features=cnn_features, rngs=rngs, **kw)


def _dense_mtan(input_shape, heads, *, hidden, cnn_features, cnn_out, rngs, **kw):
    del hidden, cnn_out
    return DenseMTAN(input_shape[-1], heads, features=cnn_features, rngs=rngs, **kw)


def _dense_hps(input_shape, heads, *, hidden, cnn_features, cnn_out, rngs, **kw):
    del hidden, cnn_out
    trunk = SegNet(input_shape[-1], features=cnn_features, rngs=rngs, **kw)
    return HardSharing(trunk, heads, head=DenseHead, rngs=rngs)


def _cascade(input_shape, heads, *, hidden, cnn_features, cnn_out, rngs, reads=None, **kw):
    del cnn_features, cnn_out
    names = list(heads)
    # By default a chain: every task reads the previous task's prediction.
    reads = {b: [a] for a, b in zip(names, names[1:], strict=False)} if reads is None else reads
    trunk = _mlps(1, input_shape, hidden, rngs)[0]
    return Cascade(trunk, heads, reads, rngs=rngs, **kw)


ARCHITECTURES: dict[str, Callable[..., nnx.Module]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "resnet": _resnet,
    "soft_sharing": _soft_sharing,
    "cross_stitch": _cross_stitch,
    "mmoe": _mixture(MMoE),
    "dselect_k": _mixture(DSelectK),
    "cgc": _extraction(CGC),
    "ple": _extraction(PLE),
    "mtan": _mtan,
    "cascade": _cascade,
    "ltb": _ltb,
    "dense_mtan": _dense_mtan,
    "dense_hps": _dense_hps,
}
DENSE_ARCHITECTURES = frozenset({"dense_mtan", "dense_hps"})


def build_architecture(
    name: str,
    input_shape: Sequence[int],
    head_dims: Mapping[str, int],
    *,
    hidden: Sequence[int] = (128, 128),
    cnn_features: Sequence[int] = (16, 32),
    cnn_out: int = 64,
    rngs: nnx.Rngs,
    **options,
) -> nnx.Module:
    """The architecture ``name`` (a key of :data:`ARCHITECTURES`) with its ``options``.

    The trunk sizes default here, once: ``hidden`` (MLP widths), ``cnn_features`` (convolution
    channels) and ``cnn_out`` (a CNN trunk's output width); the runner passes them only when a
    config sets them (``model.kwargs``).

    Options by name: ``resnet`` — ``blocks_per_stage``, ``grid``; ``soft_sharing`` —
    ``weight``, ``penalty``; ``cross_stitch`` — ``self_weight``; ``mmoe`` — ``num_experts``;
    ``dselect_k`` — ``num_experts``, ``k``, ``gamma``, ``per_example``; ``cgc`` —
    ``num_shared``, ``num_task_experts``; ``ple`` — those and ``num_levels``; ``mtan`` —
    ``grid``; ``cascade`` — ``reads`` (default: each task reads the previous one),
    ``stop_gradient``; ``ltb`` — ``branches``, ``temperature``, ``hard``, ``tree``;
    ``dense_mtan`` and ``dense_hps`` — ``convs``, ``norm`` (their encoder channels are
    ``cnn_features``). ``mlp`` and ``cnn`` (hard sharing) take none.

    Raises:
      ValueError: an unknown name or option.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown model {name!r}; known: {list(ARCHITECTURES)}.")
    try:
        return ARCHITECTURES[name](
            tuple(input_shape),
            dict(head_dims),
            hidden=tuple(hidden),
            cnn_features=tuple(cnn_features),
            cnn_out=int(cnn_out),
            rngs=rngs,
            **options,
        )
    except TypeError as error:
        if "unexpected keyword" not in str(error):
            raise
        raise ValueError(f"Model {name!r} got an unknown option: {error}.") from error


def check_dense(name: str, tasks) -> None:
    """Raises a ``ValueError`` when the architecture ``name`` cannot predict ``tasks``.

    Dense architectures (:data:`DENSE_ARCHITECTURES`) give per-pixel outputs and need every
    task dense; the others give per-sample outputs and need none dense.

    Args:
      name: a key of :data:`ARCHITECTURES`.
      tasks: the tasks (anything with ``name`` and ``dense`` attributes).
    """
    dense = name in DENSE_ARCHITECTURES
    wrong = [t.name for t in tasks if bool(t.dense) != dense]
    if wrong and dense:
        raise ValueError(
            f"Model {name!r} predicts every pixel, but the tasks {wrong} need one output per "
            f"sample: use a model other than {sorted(DENSE_ARCHITECTURES)}."
        )
    if wrong:
        raise ValueError(
            f"Model {name!r} predicts one output per sample, but the tasks {wrong} are "
            f"per-pixel: use a dense model, one of {sorted(DENSE_ARCHITECTURES)}."
        )
