"""Supervised training of the reasoning-segmentation family: the SFT loop, scored by masks.

Training is :class:`~mmreason.training.sft.SFTModule`'s (the model's loss adds the mask
terms; the batch's masks reach it). Validation and test segment greedily; the family's
evaluators report gIoU / cIoU (LISA semantics) overall and per question type, and answer
accuracy when the model names objects (:mod:`mmreason.eval.evaluators`).
"""

from __future__ import annotations

from mmreason.training.sft import SFTModule


class StarModule(SFTModule):
    """:class:`SFTModule` for ``star`` models; its evaluation adds ``val/giou``, ``val/ciou`` and gIoU per
    question type."""
