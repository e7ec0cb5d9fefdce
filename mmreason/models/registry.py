"""The built-in families and named configurations of the zoo."""

from mmreason.models.baseline import TINY_CONFIG, VisionLanguageModel
from mmreason.models.encoder import TINY_CONFIG as ENCODER_TINY_CONFIG
from mmreason.models.encoder import SceneEncoder
from mmreason.models.mccot import BASE_CONFIG as MCCOT_BASE_CONFIG
from mmreason.models.mccot import TINY_CONFIG as MCCOT_TINY_CONFIG
from mmreason.models.mccot import MCCoT
from mmreason.models.meteor import TINY_CONFIG as METEOR_TINY_CONFIG
from mmreason.models.meteor import Meteor
from mmreason.models.star import TINY_CONFIG as STAR_TINY_CONFIG
from mmreason.models.star import ReasoningSegmenter
from mmreason.models.virl import TINY_CONFIG as VIRL_TINY_CONFIG
from mmreason.models.virl import VisualRationalePolicy
from mmreason.zoo import merge_config, register_family, register_model

register_family("encoder")(SceneEncoder)
register_family("baseline")(VisionLanguageModel)
register_family("mccot")(MCCoT)
register_family("meteor")(Meteor)
register_family("virl")(VisualRationalePolicy)
register_family("star")(ReasoningSegmenter)

register_model("encoder-tiny", "encoder", ENCODER_TINY_CONFIG,
               "the tiny ViT pretrained on dense scene-graph targets (colour, shape, size, centres, boxes per "
               "patch); every tiny family starts its vision tower from it", recipe="recipes/encoder/synth-tiny-scene.yaml")
register_model("baseline-tiny-cot", "baseline", TINY_CONFIG,
               "2.0M-parameter ViT + Llama VLM writing a rationale before its answer (CPU-sized)",
               recipe="recipes/baseline/synth-tiny-cot.yaml")
register_model("baseline-tiny", "baseline", merge_config(TINY_CONFIG, {"output_format": "answer"}),
               "the same tiny VLM answering directly", recipe="recipes/baseline/synth-tiny.yaml")
register_model("mccot-tiny", "mccot", MCCOT_TINY_CONFIG,
               "two-stage MM-CoT: tiny ViT + gated fusion + T5, rationale then answer (CPU-sized)",
               recipe="recipes/mccot/synth-tiny-rationale.yaml")
register_model("mccot-tiny-direct", "mccot", merge_config(MCCOT_TINY_CONFIG, {"stages": ["direct"]}),
               "the same tiny encoder-decoder answering without a rationale", recipe="recipes/mccot/synth-tiny-direct.yaml")
register_model("mccot-base", "mccot", MCCOT_BASE_CONFIG,
               "two-stage MC-CoT at upstream scale: FLAN-T5-base + frozen ViT-B/16 (downloads both once)",
               recipe="recipes/mccot/scienceqa-base.yaml")
register_model("meteor-tiny", "meteor", METEOR_TINY_CONFIG,
               "Meteor: the tiny VLM as backbone + a 2-layer Mamba (width 64) traversing the rationale with "
               "10 <tor> (CPU-sized)", recipe="recipes/meteor/synth-tiny-step1.yaml")
register_model("virl-tiny", "virl", VIRL_TINY_CONFIG,
               "the tiny VLM as a policy that crops its image while reasoning (<crop> actions, CPU-sized)",
               recipe="recipes/virl/synth-tiny-sft.yaml")
register_model("star-tiny", "star", STAR_TINY_CONFIG,
               "the tiny VLM answering segmentation questions with a <seg> token and a SAM-style mask decoder "
               "(LISA; StAR test-time scaling)", recipe="recipes/star/synth-tiny.yaml")
