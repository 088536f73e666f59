"""Flax NNX models: trunks (:class:`MLP`, :class:`SmallCNN`) and :class:`HardSharing`."""

from mtljax.models.cnn import SmallCNN
from mtljax.models.hps import HardSharing
from mtljax.models.mlp import MLP

__all__ = ["MLP", "HardSharing", "SmallCNN"]
