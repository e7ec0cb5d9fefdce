"""The built-in families and named configurations of the zoo."""

from mmreason.models.baseline import TINY_CONFIG, VisionLanguageModel
from mmreason.zoo import merge_config, register_family, register_model

register_family("baseline")(VisionLanguageModel)

register_model("baseline-tiny-cot", "baseline", TINY_CONFIG,
               "2.0M-parameter ViT + Llama VLM writing a rationale before its answer (CPU-sized)",
               recipe="recipes/baseline/synth-tiny-cot.yaml")
register_model("baseline-tiny", "baseline", merge_config(TINY_CONFIG, {"output_format": "answer"}),
               "the same tiny VLM answering directly", recipe="recipes/baseline/synth-tiny.yaml")
