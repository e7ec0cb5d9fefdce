"""MM-CoT's released models converted into an mccot export: tiny, randomly initialised rationale and answer
models in upstream's layout (amazon-science/mm-cot ``T5ForMultimodalGeneration``, saved as the Hugging Face
Trainer saves it) convert into an export whose stage inputs are upstream's texts and whose logits equal
upstream's forward (written out below) to 1e-5."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration

import mmreason
from mmreason.checkpoints import convert
from mmreason.checkpoints.source import CheckpointError
from mmreason.data.schema import Record
from mmreason.text.tokenizer import word_tokenizer

T5_FIELDS = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4,
             "relative_attention_num_buckets": 8, "relative_attention_max_distance": 20, "dropout_rate": 0.1,
             "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0, "feed_forward_proj": "gated-gelu"}
VIT = {"img_size": 64, "patch_size": 32, "embed_dim": 24, "depth": 1, "num_heads": 2}  # ViT-L/32's layout, tiny
WORDS = ("question context options solution answer the is what colour circle shape red blue green a scene "
         "n/a because it looks").split()
PAD, EOS = 0, 3  # the word tokenizer's <pad> and </s>


class Upstream(nn.Module):
    """``T5ForMultimodalGeneration`` in eval mode: T5 encoder → ``image_dense`` → one-head ``mha_layer`` →
    ``gate_dense`` mix → T5 decoder → ``lm_head`` (outputs scaled by d_model^-0.5 when the tables are tied)."""

    def __init__(self, vocab: int, tie: bool, feature_dim: int):
        super().__init__()
        config = T5Config(**T5_FIELDS, vocab_size=vocab, tie_word_embeddings=tie, pad_token_id=PAD,
                          eos_token_id=EOS, decoder_start_token_id=PAD)
        self.t5, self.tie = T5ForConditionalGeneration(config), tie
        if not tie:  # FLAN-T5 (flan-alpaca, the released models' base) keeps its own output table
            self.t5.lm_head.weight = nn.Parameter(torch.randn(vocab, T5_FIELDS["d_model"]) * 0.5)
        d = T5_FIELDS["d_model"]
        self.image_dense = nn.Linear(feature_dim, d)
        self.mha_layer = nn.MultiheadAttention(embed_dim=d, kdim=d, vdim=d, num_heads=1, batch_first=True)
        self.gate_dense = nn.Linear(2 * d, d)

    def forward(self, input_ids, attention_mask, image_ids, labels):
        hidden = self.t5.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        image_embedding = self.image_dense(image_ids)
        image_att, _ = self.mha_layer(hidden, image_embedding, image_embedding)
        gate = torch.sigmoid(self.gate_dense(torch.cat([hidden, image_att], dim=-1)))
        hidden = (1 - gate) * hidden + gate * image_att
        decoder_input_ids = self.t5._shift_right(labels.masked_fill(labels == -100, PAD))
        out = self.t5.decoder(input_ids=decoder_input_ids, encoder_hidden_states=hidden,
                              encoder_attention_mask=attention_mask).last_hidden_state
        return self.t5.lm_head(out * T5_FIELDS["d_model"] ** -0.5 if self.tie else out)

    def save(self, folder, tokenizer, extra: dict | None = None) -> None:
        """As the Trainer saves it: ``pytorch_model.bin`` (every key, tied ones too), ``config.json``, tokenizer."""
        folder.mkdir()
        state = dict(self.t5.state_dict())
        for name in ("image_dense", "mha_layer", "gate_dense"):
            state.update({f"encoder.{name}.{k}": v for k, v in getattr(self, name).state_dict().items()})
        torch.save({**state, **(extra or {})}, folder / "pytorch_model.bin")
        config = {"architectures": ["T5ForMultimodalGeneration"], "model_type": "t5", **T5_FIELDS,
                  "vocab_size": self.t5.config.vocab_size, "tie_word_embeddings": self.tie, "pad_token_id": PAD,
                  "eos_token_id": EOS, "decoder_start_token_id": PAD, "is_encoder_decoder": True,
                  "torch_dtype": "float32", "transformers_version": "4.30.0"}
        (folder / "config.json").write_text(json.dumps(config))
        tokenizer.save_pretrained(folder)


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8))


def _records() -> list[Record]:
    """ScienceQA shards carry the hint twice: appended to the question and in meta."""
    return [Record(question="what colour is the circle ?\nContext: a scene", answer="B", choices=["red", "blue"],
                   rationale="it looks blue .", task="mcq", meta={"hint": "a scene"}),
            Record(question="what shape is green ?", answer="C", choices=["circle", "red", "a shape"],
                   rationale="because the circle is green .", task="mcq")]


UPSTREAM_TEXTS = {  # utils_prompt.py's create_one_example, whitespace collapsed as utils_data.py does
    "rationale": (["Question: what colour is the circle ? Context: a scene Options: (A) red (B) blue Solution:",
                   "Question: what shape is green ? Context: N/A Options: (A) circle (B) red (C) a shape Solution:"],
                  ["Solution: it looks blue .", "Solution: because the circle is green ."]),
    "answer": (["Question: what colour is the circle ? Context: a scene Options: (A) red (B) blue "
                "Solution: it looks blue . Answer:",
                "Question: what shape is green ? Context: N/A Options: (A) circle (B) red (C) a shape "
                "Solution: because the circle is green . Answer:"],
               ["The answer is (B).", "The answer is (C)."]),
}


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """The feature extractor (``extract_features.py``: timm's ViT-L/32 ``forward_features``, class token kept),
    tiny, and its weights saved as a local file."""
    torch.manual_seed(0)
    model = timm.create_model("vit_large_patch32_384", pretrained=False, num_classes=0, **VIT).eval()
    path = tmp_path_factory.mktemp("vit") / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, {"overrides": VIT, "weights_file": str(path)}


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(WORDS)


def _released(tmp_path, tokenizer, tie: bool) -> tuple[dict, dict]:
    """Rationale and answer models (different weights, one architecture) in their own folders."""
    models, folders = {}, {}
    for seed, stage in enumerate(("rationale", "answer")):
        torch.manual_seed(seed + 1)
        models[stage] = Upstream(len(tokenizer) + 5, tie, VIT["embed_dim"]).eval()  # T5 pads its tables too
        folders[stage] = tmp_path / f"mm-cot-{stage}"
        models[stage].save(folders[stage], tokenizer)
    return models, folders


@pytest.mark.parametrize("tie", [False, True], ids=["flan-t5", "t5-tied"])
def test_released_models_convert_into_an_export_with_upstream_outputs(tmp_path, tokenizer, vit, tie):
    extractor, tower = vit
    upstream, folders = _released(tmp_path, tokenizer, tie)
    export = convert("mmcot", str(folders["rationale"]), tmp_path / "export", answer=str(folders["answer"]),
                     vision=tower)
    config = json.loads((export / "config.json").read_text())
    assert config["family"] == "mccot" and config["source"]["format"] == "mmcot"
    assert config["config"]["templates"] == "mm-cot" and config["config"]["vision"]["keep_prefix_tokens"]
    assert config["config"]["language"]["config"]["tie_word_embeddings"] is tie
    model = mmreason.load(export)

    image = _image()
    pixels = model.preprocess(image)[None]
    transform = timm.data.create_transform(**timm.data.resolve_data_config(
        {"input_size": (3, 64, 64), "crop_pct": 1.0}, model=extractor))
    torch.testing.assert_close(pixels, transform(image)[None], atol=1e-5, rtol=0)  # bicubic, centre crop, 0.5/0.5
    records, vocab = _records(), len(tokenizer)
    with torch.no_grad():
        features = extractor.forward_features(pixels)  # (1, 1 + 4 patches, 24): upstream's vit.pth rows
        assert features.shape == (1, 5, VIT["embed_dim"])
        torch.testing.assert_close(model.stages["rationale"].image_features(pixels), features, atol=1e-6, rtol=0)
        for stage, (inputs, targets) in UPSTREAM_TEXTS.items():
            assert model.processor.stage_inputs(stage, records) == inputs
            assert model.processor.stage_targets(stage, records) == targets
            tensors = model.processor.stage_tensors(stage, records)
            expected = [ids + [EOS] for ids in tokenizer(inputs, add_special_tokens=False)["input_ids"]]
            assert [row[mask.bool()].tolist() for row, mask in zip(tensors["input_ids"], tensors["attention_mask"])] \
                == expected
            visual = pixels.expand(len(records), -1, -1, -1)
            ours = model.stage_logits(stage, visual, **tensors)
            theirs = upstream[stage](image_ids=features.expand(len(records), -1, -1), **tensors)
            assert ours.shape[-1] == vocab
            torch.testing.assert_close(ours, theirs[..., :vocab], atol=1e-5, rtol=1e-5)

    answer = model.predict(image, "what colour is the circle ?", ["red", "blue"], max_new_tokens=4)
    assert isinstance(answer["rationale"], str) and isinstance(answer["text"], str)


def test_a_rationale_model_alone_converts_into_a_rationale_only_export(tmp_path, tokenizer, vit):
    _, folders = _released(tmp_path, tokenizer, tie=False)
    model = mmreason.load(convert("mmcot", str(folders["rationale"]), tmp_path / "export", vision=vit[1]))
    assert list(model.stages) == ["rationale"]
    out = model.predict(_image(), "what colour is the circle ?", ["red", "blue"], max_new_tokens=3)
    assert out["answer"] is None and isinstance(out["rationale"], str)


def test_keys_outside_the_layout_and_other_image_features_are_named(tmp_path, tokenizer, vit):
    torch.manual_seed(0)
    model = Upstream(len(tokenizer), False, VIT["embed_dim"])
    model.save(tmp_path / "odd", tokenizer, extra={"mystery.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\), e.g. \['mystery.weight'\]"):
        convert("mmcot", str(tmp_path / "odd"), tmp_path / "export", vision=vit[1])
    model.save(tmp_path / "extra", tokenizer, extra={"encoder.mystery.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected \['t5.encoder.mystery.weight'\]"):
        convert("mmcot", str(tmp_path / "extra"), tmp_path / "export", vision=vit[1])
    Upstream(len(tokenizer), False, 256).save(tmp_path / "detr", tokenizer)
    with pytest.raises(CheckpointError, match=r"image_dense reads DETR \(img_type detr\) features"):
        convert("mmcot", str(tmp_path / "detr"), tmp_path / "export", vision=vit[1])
    text_only = tmp_path / "text-only"
    text_only.mkdir()
    torch.save(model.t5.state_dict(), text_only / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (text_only / name).write_bytes((tmp_path / "odd" / name).read_bytes())
    with pytest.raises(CheckpointError, match="no encoder.image_dense weights"):
        convert("mmcot", str(text_only), tmp_path / "export", vision=vit[1])
    with pytest.raises(CheckpointError, match="format 'llava' takes no option 'answer'"):
        convert("llava", str(tmp_path / "odd"), tmp_path / "export", answer=str(tmp_path / "odd"))


def test_zoo_templates_stay_the_default():
    from mmreason.text.prompts import answer_sentence, qcm_input, rationale_target, strip_rationale_cue

    record = _records()[1]
    assert qcm_input(record) == "question : what shape is green ?\noptions : ( A ) circle ( B ) red ( C ) a shape"
    assert answer_sentence(record) == "the answer is ( C ) ."
    assert rationale_target(" r ") == "solution : r" and strip_rationale_cue("solution : r") == "r"
    assert strip_rationale_cue("Solution: r", "mm-cot") == "r"
    with pytest.raises(ValueError, match="unknown templates 'MM-CoT'"):
        qcm_input(record, templates="MM-CoT")


def test_a_loaded_t5_with_its_own_output_table_exports_and_reloads(tmp_path):
    """A FLAN-T5 language model loaded from a folder keeps its separate ``lm_head`` through an export."""
    from mmreason.build import build_model
    from mmreason.export import load_export, save_export

    tokenizer = word_tokenizer(WORDS)
    t5 = T5ForConditionalGeneration(T5Config(**T5_FIELDS, vocab_size=len(tokenizer), tie_word_embeddings=False))
    t5.lm_head.weight = nn.Parameter(torch.randn(len(tokenizer), T5_FIELDS["d_model"]))
    t5.save_pretrained(tmp_path / "flan")
    tokenizer.save_pretrained(tmp_path / "flan")
    model = build_model("mccot", {"vision": {"name": "vit_base_patch16_224", "overrides": VIT}, "tokenizer":
                                  str(tmp_path / "flan"), "language": {"path": str(tmp_path / "flan")},
                                  "preprocess": {"image_size": 64}, "stages": ["rationale"]})
    stage = model.stages["rationale"].t5
    assert stage.lm_head.weight is not stage.shared.weight
    loaded = load_export(save_export(model, tmp_path / "export")).stages["rationale"].t5
    torch.testing.assert_close(loaded.lm_head.weight, stage.lm_head.weight)
    assert loaded.lm_head.weight is not loaded.shared.weight
