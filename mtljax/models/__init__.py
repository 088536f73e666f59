"""Flax NNX models: trunks and multi-task architectures (see docs/architectures.md).

Trunks map inputs to ``[B, D]``: :class:`MLP`, :class:`SmallCNN`, :class:`ResNet`,
:class:`SequenceEncoder`; :class:`SegNet` maps images to per-pixel features ``[B, H, W, D]``.
Architectures map inputs to ``{task: outputs}`` and keep their shared parameters under a path
element ``shared`` (:func:`mtljax.nnx_bridge.split_params`): :class:`HardSharing`,
:class:`SoftSharing`, :class:`CrossStitch`, :class:`MMoE`, :class:`CGC`, :class:`PLE`,
:class:`MTAN`, :class:`DSelectK`, :class:`Cascade`, :class:`LTB`, and the dense
:class:`DenseMTAN` (and :class:`HardSharing` on a :class:`SegNet` with :class:`DenseHead` s).
Multi-input datasets train through :func:`multi_input_loss`.
"""

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
from mtljax.models.multi_input import multi_input_loss
from mtljax.models.ple import PLE
from mtljax.models.resnet import ResNet
from mtljax.models.segnet import SegNet
from mtljax.models.sequence import SequenceEncoder
from mtljax.models.soft_sharing import SoftSharing

__all__ = [
    "CGC",
    "LTB",
    "MLP",
    "MMoE",
    "MTAN",
    "PLE",
    "Cascade",
    "CrossStitch",
    "DSelectK",
    "DenseHead",
    "DenseMTAN",
    "HardSharing",
    "ResNet",
    "SegNet",
    "SequenceEncoder",
    "SmallCNN",
    "SoftSharing",
    "multi_input_loss",
]
