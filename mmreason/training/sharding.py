"""Training models that do not fit one GPU's memory: FSDP sharded by transformer layer, and activation
checkpointing of the language model.

:class:`DecoderLayerFSDP` is Lightning's FSDP strategy with the unit chosen from the model itself: every
transformer layer class its transformers parts name in ``_no_split_modules`` (the default of accelerate's
FSDP plugin), so a recipe names no class but this one. Checkpoints stay single files written through the
trainer's checkpoint IO (atomic ``last.ckpt``, ``export --ckpt``, ``--ckpt_path last``), export folders
are written from the gathered weights (:class:`~mmreason.training.callbacks.ExportCallback`), and mixed precision stays
autocast over float32 weights, as without sharding.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
from lightning.pytorch.plugins.precision.fsdp import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from transformers import PreTrainedModel


def decoder_layer_classes(module: nn.Module) -> set[type[nn.Module]]:
    """The transformer layer classes of every transformers model inside ``module``."""
    names = {name for part in module.modules() if isinstance(part, PreTrainedModel)
             for name in part._no_split_modules or ()}
    classes = {type(part) for part in module.modules() if type(part).__name__ in names}
    if not classes:
        raise ValueError(f"{type(module).__name__} holds no transformers layers to shard by; "
                         "use strategy: ddp")
    return classes


class _RootNormClipping(FSDPPrecision):
    """Gradient-norm clipping through the root FSDP module, which reduces the norm over every rank's shard
    (``torch.nn.utils.clip_grad_norm_`` would see one shard: torch's FSDP docs, ``clip_grad_norm_``)."""

    def __init__(self, precision, strategy: FSDPStrategy):
        super().__init__(precision)
        self.strategy = strategy

    def clip_grad_by_norm(self, optimizer, clip_val) -> None:
        self.strategy.model.clip_grad_norm_(clip_val)


class DecoderLayerFSDP(FSDPStrategy):
    """FSDP with one unit per transformer layer; the rest of the model (vision tower, projector,
    embeddings, head) is the root unit.

    Args:
        sharding_strategy: ``FULL_SHARD`` (ZeRO-3: weights, gradients and optimizer state sharded; least
            memory), ``SHARD_GRAD_OP`` (ZeRO-2: weights whole between forward and backward; less
            communication) or ``HYBRID_SHARD`` (full sharding within a node, replicas across nodes).
        cpu_offload: keep the sharded weights and optimizer state in CPU memory (slow; the last resort).

    The state dict is always gathered whole on global rank 0 (``state_dict_type: full``): a sharded one
    is a folder written by torch.distributed.checkpoint, outside the atomic checkpoint writer and
    unreadable by ``export --ckpt``.
    """

    def __init__(self, sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD"] = "FULL_SHARD",
                 cpu_offload: bool = False):
        super().__init__(sharding_strategy=sharding_strategy, cpu_offload=cpu_offload, state_dict_type="full")

    @property
    def mixed_precision_config(self):
        """None under ``*-mixed`` precision: the weights stay float32 and autocast picks each op's dtype,
        as without sharding (so float32 islands such as Meteor's Mamba keep working)."""
        if "mixed" in self.precision_plugin.precision:
            return None
        return super().mixed_precision_config

    def setup(self, trainer: L.Trainer) -> None:
        self.precision_plugin = _RootNormClipping(self.precision_plugin.precision, self)
        super().setup(trainer)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        """Wrapped here rather than by Lightning, which names the device by its index: given the device
        itself, FSDP also runs on CPU processes (gloo), as the tests do."""
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        if not any(isinstance(part, FullyShardedDataParallel) for part in model.modules()):
            model = FullyShardedDataParallel(
                model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy, device_id=self.root_device,
                auto_wrap_policy=ModuleWrapPolicy(decoder_layer_classes(model)), **self.kwargs)
        return super()._setup_model(model)


class ActivationCheckpointing(L.Callback):
    """Recompute the language model's layer activations in backward instead of keeping them (about a
    third more compute for activation memory that no longer grows with depth); with or without sharding."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.model.checkpoint_activations()
