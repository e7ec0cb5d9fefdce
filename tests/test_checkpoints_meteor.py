"""Released Meteor converted into a meteor export: a tiny, randomly initialised Meteor-MLM (InternLM2 with
packed ``wqkv`` and partial LoRA, a CLIP tower, ``vision_proj``) and Meteor-Mamba (transformers' Mamba with
``vision_proj`` and ``tor_proj``), saved in upstream's layout (github BK-Lee/Meteor, ``meteor/arch``), convert
into an export whose prompts are upstream's and whose logits equal upstream's forward (written out below)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    MambaConfig,
    MambaForCausalLM,
    PreTrainedTokenizerFast,
)

import mmreason
from mmreason.checkpoints import convert
from mmreason.checkpoints import meteor as meteor_format
from mmreason.checkpoints.source import CLIP_MEAN, CLIP_STD, CheckpointError
from mmreason.data.schema import Record

WORDS = ("system user assistant rationale you should give helpful answer to based on the . "
         "what colour is circle ? red blue").split()
TURNS = ["[UNUSED_TOKEN_145]", "[UNUSED_TOKEN_146]"]
LM = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 1000000, "max_position_embeddings": 256,
      "rope_scaling": {"type": "dynamic", "factor": 2.0}, "bias": True, "hidden_act": "silu"}
RANK = 8  # upstream: 256, alpha 256
CLIP = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
        "patch_size": 14, "image_size": 28}  # 2 × 2 patches (upstream: 35 × 35 at 490 px)
MAMBA = {"hidden_size": 32, "state_size": 4, "num_hidden_layers": 2, "expand": 2, "vocab_size": 50}
QUESTION = "what colour is the circle ?"


def _tokenizer() -> PreTrainedTokenizerFast:
    """InternLM2's tokenizer stand-in: <s>, </s>, the chat-turn tokens; no <image> or <tor>
    (load_meteor.py adds them)."""
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *TURNS, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    words = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), behavior="isolated")
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), words])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="</s>")
    tokenizer.add_special_tokens({"additional_special_tokens": TURNS})
    return tokenizer


class PLoRA(nn.Module):
    """build_module.py's ``LoRA``: ``ffn`` everywhere, + lora_B(lora_A(x)) · alpha / r where ``im_mask``."""

    def __init__(self, fan_in: int, fan_out: int, bias: bool):
        super().__init__()
        self.ffn = nn.Linear(fan_in, fan_out, bias=bias)
        self.lora_A = nn.Linear(fan_in, RANK, bias=False)
        self.lora_B = nn.Linear(RANK, fan_out, bias=False)
        nn.init.normal_(self.lora_B.weight, std=0.2)  # trained: not zero

    def forward(self, x, im_mask):
        res = self.ffn(x)
        res[im_mask] += self.lora_B(self.lora_A(x[im_mask])) * (RANK / RANK)
        return res


def _rms(x, weight, eps=LM["rms_norm_eps"]):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x):
    return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), dim=-1)


class InternLM2Layer(nn.Module):
    def __init__(self):
        super().__init__()
        d, heads, kv = LM["hidden_size"], LM["num_attention_heads"], LM["num_key_value_heads"]
        self.attention = nn.Module()
        self.attention.wqkv = PLoRA(d, (heads + 2 * kv) * (d // heads), LM["bias"])
        self.attention.wo = PLoRA(d, d, LM["bias"])
        self.feed_forward = nn.Module()
        self.feed_forward.w1 = PLoRA(d, LM["intermediate_size"], False)
        self.feed_forward.w3 = PLoRA(d, LM["intermediate_size"], False)
        self.feed_forward.w2 = PLoRA(LM["intermediate_size"], d, False)
        self.attention_norm = nn.Module()
        self.attention_norm.weight = nn.Parameter(1 + 0.1 * torch.randn(d))
        self.ffn_norm = nn.Module()
        self.ffn_norm.weight = nn.Parameter(1 + 0.1 * torch.randn(d))

    def forward(self, x, im_mask):
        """modeling_internlm2.py's eager attention and MLP, one unpadded sequence."""
        d, heads, kv = LM["hidden_size"], LM["num_attention_heads"], LM["num_key_value_heads"]
        head_dim, groups, (b, q_len, _) = d // heads, heads // kv, x.shape
        h = _rms(x, self.attention_norm.weight)
        qkv = self.attention.wqkv(h, im_mask).view(b, q_len, kv, groups + 2, head_dim)  # 'b q (h gs d)'
        q = qkv[..., :groups, :].reshape(b, q_len, heads, head_dim).transpose(1, 2)
        k, v = qkv[..., -2, :].transpose(1, 2), qkv[..., -1, :].transpose(1, 2)
        inv_freq = 1.0 / (LM["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
        emb = torch.cat([torch.outer(torch.arange(q_len).float(), inv_freq)] * 2, dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = q @ k.transpose(2, 3) / math.sqrt(head_dim)
        future = torch.ones(q_len, q_len, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, torch.finfo(x.dtype).min)
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, q_len, d)
        x = x + self.attention.wo(out, im_mask)
        h = _rms(x, self.ffn_norm.weight)
        ff = self.feed_forward
        return x + ff.w2(F.silu(ff.w1(h, im_mask)) * ff.w3(h, im_mask), im_mask)


class MeteorMLM(nn.Module):
    """modeling_meteor.py's MeteorForCausalLM: InternLM2 + ``vit`` + ``vision_proj``; ``output`` has
    vocab_size − 2 rows."""

    def __init__(self, vocab: int):
        super().__init__()
        d = LM["hidden_size"]
        self.model = nn.Module()
        self.model.tok_embeddings = nn.Embedding(vocab, d)
        self.model.layers = nn.ModuleList(InternLM2Layer() for _ in range(LM["num_hidden_layers"]))
        self.model.norm = nn.Module()
        self.model.norm.weight = nn.Parameter(1 + 0.1 * torch.randn(d))
        self.output = nn.Linear(d, vocab - 2, bias=False)
        self.vit = nn.Module()
        self.vit.vision_tower = CLIPVisionModel(CLIPVisionConfig(**CLIP)).eval()
        self.vision_proj = nn.Sequential(nn.Linear(CLIP["hidden_size"], d), nn.GELU(), nn.Linear(d, d))

    def clip_features(self, pixels):  # CLIPVisionTower: hidden_states[-1], patches only
        return self.vit.vision_tower(pixels, output_hidden_states=True).hidden_states[-1][:, 1:]

    def forward(self, input_ids, image_features, tor_features, image_id, tor_id, lora: bool = True):
        embeds = self.model.tok_embeddings(input_ids)
        embeds[input_ids == image_id] = self.vision_proj(image_features).reshape(-1, LM["hidden_size"])
        embeds[input_ids == tor_id] = tor_features
        im_mask = (input_ids == image_id) & lora
        for layer in self.model.layers:
            embeds = layer(embeds, im_mask)
        return self.output(_rms(embeds, self.model.norm.weight))

    def save(self, folder, tokenizer, extra: dict | None = None, drop: tuple = ()) -> None:
        """As save_pretrained writes it under transformers 4: CLIP under ``vision_model.``, sharded with
        an index."""
        folder.mkdir()
        state = {}
        for key, tensor in self.state_dict().items():
            if key.startswith("vit.vision_tower.") and not key.startswith("vit.vision_tower.vision_model."):
                key = "vit.vision_tower.vision_model." + key[len("vit.vision_tower."):]
            if not key.endswith("position_ids") and key not in drop:
                state[key] = tensor.contiguous()
        state.update(extra or {})
        names = sorted(state)
        shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
                  "model-00002-of-00002.safetensors": names[len(names) // 2:]}
        for file, keys in shards.items():
            save_file({k: state[k] for k in keys}, str(folder / file))
        index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        config = {"architectures": ["MeteorForCausalLM"], "model_type": "internlm2", **LM,
                  "vocab_size": self.model.tok_embeddings.num_embeddings, "pad_token_id": 0,
                  "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
                  "attn_implementation": "flash_attention_2",
                  "image_token_index": len(tokenizer), "tor_token_index": len(tokenizer) + 1,
                  "torch_dtype": "float16", "transformers_version": "4.41.2"}
        (folder / "config.json").write_text(json.dumps(config))
        tokenizer.save_pretrained(folder)


class MeteorMamba(nn.Module):
    """modeling_mmamba.py's MeteorMambaForCausalLM: Mamba with a (vocab + 2)-row table, vision_proj and
    tor_proj."""

    def __init__(self, vocab: int):
        super().__init__()
        self.mamba = MambaForCausalLM(MambaConfig(**MAMBA)).eval()
        self.mamba.backbone.embeddings = nn.Embedding(vocab, MAMBA["hidden_size"])
        width = MAMBA["hidden_size"]
        self.vision_proj = nn.Sequential(nn.Linear(CLIP["hidden_size"], width), nn.GELU(),
                                         nn.Linear(width, width))
        self.tor_proj = nn.Sequential(nn.Linear(width, LM["hidden_size"]), nn.GELU(),
                                      nn.Linear(LM["hidden_size"], LM["hidden_size"]))

    def forward(self, input_ids, image_features, image_id, tor_id):
        embeds = self.mamba.backbone.embeddings(input_ids)
        embeds[input_ids == image_id] = self.vision_proj(image_features).reshape(-1, MAMBA["hidden_size"])
        hidden = self.mamba.backbone(inputs_embeds=embeds).last_hidden_state
        return self.tor_proj(hidden[input_ids == tor_id])

    def save(self, folder, tokenizer, extra: dict | None = None) -> None:
        folder.mkdir()
        state = {**{k: v.contiguous() for k, v in self.mamba.state_dict().items()},
                 **{f"vision_proj.{k}": v for k, v in self.vision_proj.state_dict().items()},
                 **{f"tor_proj.{k}": v for k, v in self.tor_proj.state_dict().items()}, **(extra or {})}
        state["lm_head.weight"] = state["lm_head.weight"].clone()  # tied to the old table upstream
        save_file(state, str(folder / "model.safetensors"))
        config = {**self.mamba.config.to_dict(), "architectures": ["MeteorMambaForCausalLM"],
                  "image_token_index": len(tokenizer), "tor_token_index": len(tokenizer) + 1}
        (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    vocab = len(tokenizer) + 2
    mlm, mamba = MeteorMLM(vocab).eval(), MeteorMamba(vocab).eval()
    root = tmp_path_factory.mktemp("meteor")
    mlm.save(root / "Meteor-MLM", tokenizer)
    mamba.save(root / "Meteor-Mamba", tokenizer)
    return root, tokenizer, mlm, mamba


def _upstream_prompts(tokenizer, question: str, image_tokens: int) -> tuple[list[int], list[int]]:
    """demo.py: ``eval_process`` of Meteor-Mamba (``make_instruction_for_mmamba``, ``<image>\\n`` prepended),
    then of Meteor-MLM (``make_instruction_for_eval_meteor``, data 'demo'), ``add_bundle_tokens``, one
    tokenizer call."""
    question = "<image>\n" + question
    mamba = (f"<s>[UNUSED_TOKEN_146]user\n{question}[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]rationale\n"
             + "<tor>" * 10 + "[UNUSED_TOKEN_145]\n</s>")
    system = "You should give helpful answer to user based on the rationale."
    mlm = ("<s>" + "<tor>" * 10 + f"[UNUSED_TOKEN_146]system\n{system}[UNUSED_TOKEN_145]\n"
           f"[UNUSED_TOKEN_146]user\n{question}[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n")
    bundle = [text.replace("<image>", "<image>" * image_tokens) for text in (mamba, mlm)]
    ids = tokenizer(bundle, add_special_tokens=False)["input_ids"]
    return ids[0], ids[1]


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (CLIP["image_size"],) * 2 + (3,), dtype=np.uint8))


def test_released_meteor_converts_into_an_export_with_upstream_prompts_and_logits(released, tmp_path):
    root, _, mlm, mamba = released
    export = convert("meteor", str(root / "Meteor-MLM"), tmp_path / "export", mamba=str(root / "Meteor-Mamba"))
    config = json.loads((export / "config.json").read_text())["config"]
    assert config["partial_lora"]["rank"] == RANK and config["output_format"] == "plain"
    model = mmreason.load(export)

    tokenizer = _tokenizer()
    tokenizer.add_tokens("<image>", special_tokens=True)  # load_meteor.py
    tokenizer.add_tokens("<tor>", special_tokens=True)
    image_id, tor_id = tokenizer.convert_tokens_to_ids("<image>"), tokenizer.convert_tokens_to_ids("<tor>")
    assert (model.image_token_id, model.tor_token_id) == (image_id, tor_id)
    assert model.tokenizer.eos_token == "[UNUSED_TOKEN_145]"

    image = _image()
    pixels = model.preprocess(image)[None]
    raw = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None]  # pil_to_tensor
    resized = F.interpolate(raw, size=(CLIP["image_size"],) * 2, mode="bicubic")
    mean = torch.tensor(CLIP_MEAN).view(1, -1, 1, 1) * 255
    std = torch.tensor(CLIP_STD).view(1, -1, 1, 1) * 255
    torch.testing.assert_close(pixels, (resized - mean) / std, atol=1e-5, rtol=0)  # image_processor

    record = Record(question=QUESTION, answer="")
    inputs = model.processor.generation_inputs([record])
    mamba_ids, mlm_ids = _upstream_prompts(tokenizer, QUESTION, model.num_image_tokens)
    assert inputs["traversal_ids"][0].tolist() == mamba_ids
    assert inputs["input_ids"][0].tolist() == mlm_ids
    with torch.no_grad():
        features = mlm.clip_features(pixels)
        torch.testing.assert_close(model.vision(pixels), features, atol=1e-6, rtol=0)
        tor = mamba(torch.tensor([mamba_ids]), features, image_id, tor_id)
        theirs = mlm(torch.tensor([mlm_ids]), features, tor, image_id, tor_id)
        ours = model(pixels, **inputs).logits
        plain = model.lm(inputs_embeds=model.embed(pixels, **{k: v for k, v in inputs.items()
                                                              if k != "attention_mask"})).logits
    assert ours.shape[-1] >= theirs.shape[-1]
    torch.testing.assert_close(ours[..., : theirs.shape[-1]], theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, ours, atol=1e-6, rtol=0)
    without = mlm(torch.tensor([mlm_ids]), features, tor, image_id, tor_id, lora=False)
    assert not torch.allclose(theirs, without, atol=1e-3), "the partial LoRA must matter for this test"


def test_cached_generation_applies_partial_lora_to_the_prompt_only(released):
    root, *_ = released
    model = meteor_format.convert(root / "Meteor-MLM", mamba=str(root / "Meteor-Mamba")).eval()
    record = Record(question=QUESTION, answer="")
    pixels = model.preprocess(_image())[None]
    suppress = [model.image_token_id, model.tor_token_id]  # as Meteor.generate does
    new = model.generate_ids(pixels, [record], max_new_tokens=4, min_new_tokens=4,
                             suppress_tokens=suppress)[0]
    inputs = model.processor.generation_inputs([record])
    ids = inputs.pop("input_ids")
    with torch.no_grad():
        embeds = model.embed(pixels, ids, **{k: v for k, v in inputs.items() if k != "attention_mask"})
        for token in new.tolist():  # no cache: the whole sequence again, image positions from the prompt
            logits = model.lm(inputs_embeds=embeds).logits[0, -1]
            logits[suppress] = -torch.inf
            assert int(logits.argmax()) == token
            row = model.lm.get_input_embeddings()(torch.tensor([[token]]))
            embeds = torch.cat([embeds, row], dim=1)
    answer = model.predict(_image(), QUESTION, max_new_tokens=3)
    assert isinstance(answer["text"], str)


def test_keys_outside_the_layout_are_named(released, tmp_path):
    root, _, mlm, mamba = released
    tokenizer = _tokenizer()
    mlm.save(tmp_path / "odd", tokenizer, extra={"model.mystery.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\), e.g. \['model.mystery.weight'\]"):
        meteor_format.convert(tmp_path / "odd", mamba=str(root / "Meteor-Mamba"))
    mlm.save(tmp_path / "short", tokenizer, drop=("vision_proj.2.bias",))
    with pytest.raises(CheckpointError, match=r"missing \['projector.2.bias'\]"):
        meteor_format.convert(tmp_path / "short", mamba=str(root / "Meteor-Mamba"))
    mamba.save(tmp_path / "odd-mamba", tokenizer, extra={"rationale_head.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\), e.g. \['rationale_head.weight'\]"):
        meteor_format.convert(root / "Meteor-MLM", mamba=str(tmp_path / "odd-mamba"))
    mlm.save(tmp_path / "no-lora", tokenizer, drop=tuple(k for k in mlm.state_dict() if ".lora_" in k))
    with pytest.raises(CheckpointError, match="no partial LoRA weights"):
        meteor_format.convert(tmp_path / "no-lora", mamba=str(root / "Meteor-Mamba"))


def test_a_converted_meteor_evaluates_and_fine_tunes_like_any_other(released, tmp_path):
    from mmreason.build import create_model
    from mmreason.data.preprocess import Preprocess
    from mmreason.data.shards import eval_stream, resolve_shards
    from mmreason.data.synth import SynthConfig
    from mmreason.data.synth_shards import synthesize
    from mmreason.inference import evaluate

    root, *_ = released
    export = convert("meteor", str(root / "Meteor-MLM"), tmp_path / "export", mamba=str(root / "Meteor-Mamba"))
    synthesize(tmp_path / "data", {"test": 4}, SynthConfig(tasks=("count",)), progress=False)
    urls = resolve_shards(tmp_path / "data", "test")
    report = evaluate(mmreason.load(export), urls, batch_size=4, max_new_tokens=3)["report"]
    assert report["n"] == 4 and 0.0 <= report["accuracy"] <= 1.0
    model = create_model(init={"from": str(export)}, step=2)  # answering: everything trains
    batch = next(iter(eval_stream(urls, Preprocess.from_dict(model.preprocess.to_dict()), 4)[0]))
    batch["images"] = model.preprocess.normalize(batch["pixels"])
    out = model.loss(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["target_tokens"] > 0
    lora = model.lm.model.layers[0].self_attn.q_proj.lora_B.weight
    assert lora.grad is not None and lora.grad.abs().sum() > 0  # image tokens reach the partial LoRA
