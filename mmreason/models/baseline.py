"""The baseline LLaVA-style vision-language model: vision encoder → projector → decoder LM.

It owns its tokenizer and preprocessing, turns canonical records into
training tensors (loss on target tokens only), generates answers in batches
with a KV cache, and answers single images through :meth:`predict`. Meteor's
backbone, the RL policy and the segmentation model extend it.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from mmreason.data.preprocess import Preprocess
from mmreason.data.rationale_edits import split_steps
from mmreason.data.schema import Record
from mmreason.eval.answers import split_rationale
from mmreason.eval.step_utility import entropy_bits
from mmreason.eval.voting import per_record, scored_votes
from mmreason.layers.language import build_language_model, splice_image_features
from mmreason.layers.position import sincos_2d
from mmreason.layers.projector import build_projector
from mmreason.layers.vision import build_vision_tower
from mmreason.models.base import REASONS, ZooModel, freeze, nothing_to_learn
from mmreason.models.config_schema import VLM
from mmreason.models.processor import IGNORE_INDEX, PromptProcessor
from mmreason.text.prompts import PROMPT, thinking
from mmreason.text.tokenizer import build_tokenizer
from mmreason.zoo import merge_config, register_family, register_model

log = logging.getLogger(__name__)

IMAGE_POSITIONS = ("none", "sincos2d")

TINY_CONFIG = {
    "vision": {
        "name": "vit_base_patch16_224",
        "overrides": {"img_size": 64, "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4,
                      "mlp_ratio": 2.0, "class_token": False},
    },
    "projector": "mlp2x_gelu",
    "language": {"config": {"model_type": "llama", "hidden_size": 192, "intermediate_size": 512,
                            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
                            "max_position_embeddings": 1024, "tie_word_embeddings": True}},
    "tokenizer": "synth-word",
    "output_format": "cot",
    "preprocess": {"image_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    "max_length": 512,
}


@register_family("baseline")
class VisionLanguageModel(ZooModel):
    config_schema = VLM
    init_parts = ("vision", "projector", "language")
    response_options = ("votes", "temperature", "top_p", "rerank", "stop_entropy")
    probes_rationales = True  # families whose outputs hold more than words (crops, masks, traversal) say False

    def __init__(self, config: dict, tokenizer=None):
        """``config["vision"]["frozen"]`` keeps the vision tower fixed. Parts start from an export
        through :mod:`mmreason.build` (``init``); the constructor reads no files but a pretrained
        tower's or language model's own weights."""
        super().__init__()
        self.config = copy.deepcopy(config)
        self.preprocess = Preprocess.from_dict({**Preprocess().to_dict(), **config.get("preprocess", {})})
        language = dict(config["language"])
        if tokenizer is None:
            spec = config.get("tokenizer", "synth-word")
            gguf_file = None
            if spec == "from_language":  # the pretrained language model's own tokenizer
                spec, gguf_file = language.get("path"), language.get("gguf_file")
            tokenizer = build_tokenizer(spec, gguf_file)
        self.tokenizer = tokenizer
        vision = config["vision"]
        self.vision = build_vision_tower(vision)
        if vision.get("frozen"):
            freeze(self.vision)
        # a released model's table may be padded beyond its tokenizer (LLaVA-1.5: 32,064 rows): keep it
        vocab_size = max(len(self.tokenizer), (language.get("config") or {}).get("vocab_size", 0))
        self.lm = build_language_model(language.get("config"), language.get("path"), language.get("gguf_file"),
                                       vocab_size=vocab_size)
        self.projector = build_projector(config.get("projector", "mlp2x_gelu"), self.vision.width,
                                         self.lm.config.hidden_size)
        self.num_image_tokens = self.vision.num_tokens(self.preprocess.image_size)
        position = config.get("image_position", "none")
        if position not in IMAGE_POSITIONS:
            raise ValueError(f"image_position must be one of {IMAGE_POSITIONS}, got {position!r}")
        codes = sincos_2d(self.num_image_tokens, self.lm.config.hidden_size) if position == "sincos2d" else None
        self.register_buffer("image_position_codes", codes, persistent=False)
        self.processor = self.build_processor(config)
        self.image_token_id = self.processor.image_token_id

    def build_processor(self, config: dict) -> PromptProcessor:
        """Records → this model's token tensors (families with their own prompts or targets override)."""
        return PromptProcessor(self.tokenizer, self.num_image_tokens, int(config.get("max_length", 512)),
                               config.get("output_format", "cot"), config.get("prompt", PROMPT))

    @property
    def output_format(self) -> str:
        return self.processor.output_format

    @output_format.setter
    def output_format(self, value: str) -> None:
        self.processor.output_format = value

    def batch_processor(self) -> PromptProcessor:
        return self.processor

    def part_modules(self, part: str) -> list[nn.Module]:
        modules = {"vision": self.vision, "projector": self.projector, "language": self.lm}
        return [modules[part]] if part in modules else super().part_modules(part)

    def checkpoint_activations(self) -> None:
        """Each decoder layer of the language model recomputed in backward (transformers' gradient
        checkpointing; non-reentrant, so it also runs inside FSDP units and with frozen inputs)."""
        self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ---- inputs -------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.project_patches(self.vision(images))

    def project_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Vision patch tokens → backbone-width image features (families reusing the patches call this)."""
        features = self.projector(patches)
        if self.image_position_codes is not None:
            features = features + self.image_position_codes.to(features.dtype)
        return features

    def embed(self, images: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.lm.get_input_embeddings()(input_ids)
        return splice_image_features(embeds, input_ids, self.image_token_id, self.encode_images(images))

    # ---- training -----------------------------------------------------------------------------
    def forward(self, images, input_ids, attention_mask, labels=None):
        return self.lm(inputs_embeds=self.embed(images, input_ids), attention_mask=attention_mask, labels=labels)

    def batch_loss(self, images: torch.Tensor, records: list[Record],
                   inputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Loss, token accuracy and token counts for one batch (``inputs``: the processor's tensors of
        ``records`` when a loader worker made them); samples whose prompt exceeds ``max_length`` are
        skipped, logged and counted (``skipped``) rather than stopping training."""
        if inputs is None:
            inputs = self.processor.training_inputs(records, skip_too_long=True)
        inputs = {k: v.to(images.device) for k, v in inputs.items()}
        rows = inputs.pop("rows")
        skipped = len(records) - len(rows)
        if skipped:
            log.warning("skipped %d sample(s) whose prompt exceeds max_length=%d", skipped, self.max_length)
            if not len(rows):
                return nothing_to_learn(self, skipped)
            images = images[rows]
        out = self(images, **inputs)
        shifted_labels = inputs["labels"][:, 1:]
        valid = shifted_labels != IGNORE_INDEX
        predicted = out.logits[:, :-1].argmax(-1)
        n_tokens = valid.sum()
        accuracy = ((predicted == shifted_labels) & valid).sum() / n_tokens.clamp(min=1)
        return {"loss": out.loss, "token_accuracy": accuracy, "target_tokens": n_tokens,
                "tokens": inputs["attention_mask"].sum(), "skipped": skipped}

    # ---- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, images: torch.Tensor, records: list[Record], max_new_tokens: int = 128,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 num_return_sequences: int = 1, **extra) -> list[str]:
        """Batched generation with a KV cache; returns B×K texts (the K samples of a prompt adjacent).

        ``extra`` goes to transformers' ``generate`` unchanged (e.g. ``min_new_tokens``).
        """
        output = self.generate_ids(images, records, max_new_tokens, do_sample, temperature, top_p,
                                   num_return_sequences, **extra)
        return self.tokenizer.batch_decode(output, skip_special_tokens=False, clean_up_tokenization_spaces=True)

    @torch.no_grad()
    def generate_ids(self, images: torch.Tensor, records: list[Record], max_new_tokens: int = 128,
                     do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                     num_return_sequences: int = 1, continuations: list[str] | None = None,
                     **extra) -> torch.Tensor:
        """:meth:`generate` as token ids: (B×K, new tokens), padded after EOS; with ``continuations``
        (one text per record) generation goes on after each prompt's text."""
        inputs = self.processor.generation_inputs(records, continuations) if continuations is not None else (
            self.processor.generation_inputs(records))
        inputs = {k: v.to(images.device) for k, v in inputs.items()}
        ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
        embeds = self.embed(images, ids, **inputs)  # a family's extra inputs (e.g. Meteor's traversal) go along
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {
            "do_sample": False}
        if num_return_sequences > 1:
            extra["past_key_values"], embeds, mask = self.shared_prefill(embeds, mask, num_return_sequences)
        return self.lm.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=extra.pop("eos_token_id", self.tokenizer.eos_token_id),
            bos_token_id=self.tokenizer.bos_token_id, **sampling, **extra,
        )

    def answer_batch(self, images: torch.Tensor, records: list[Record], **generate_kwargs) -> list[str]:
        """Generated texts ready for scoring: one per record (or K per record when sampling K)."""
        return [self.clean_output(t) for t in self.generate(images, records, **generate_kwargs)]

    def capability_set(self) -> frozenset[str]:
        """A model writing ``<think> rationale </think>`` before its answer can have its rationale probed."""
        reasons = {REASONS} if self.probes_rationales and self.output_format == "cot" else set()
        return frozenset(self.capabilities | reasons)

    def respond(self, images: torch.Tensor, records: list[Record], max_new_tokens: int | None = None,
                votes: int = 1, temperature: float = 0.7, top_p: float = 1.0, rerank=None,
                stop_entropy: float | None = None) -> list[dict]:
        """Greedy answers; with ``votes`` K > 1, K sampled outputs per record whose answers vote (weighted
        by ``rerank``, a rationale scorer, when given); with ``stop_entropy``, rationales cut short as
        soon as the answer's entropy falls below it (:meth:`respond_early`)."""
        budget = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        if stop_entropy is not None:
            if votes > 1 or rerank is not None:
                raise ValueError("stop_entropy stops a greedy rationale early; it does not combine with votes "
                                 "or rerank")
            return self.respond_early(images, records, float(stop_entropy), max_new_tokens or 128)
        if votes < 1:
            raise ValueError(f"votes must be at least 1, got {votes}")
        if votes == 1:
            if rerank is not None:
                raise ValueError("rerank weighs the votes of several samples; give votes > 1")
            return [{"text": text} for text in self.answer_batch(images, records, **budget)]
        samples = self.sample_outputs(images, records, votes, temperature, top_p, max_new_tokens)
        return scored_votes([s["text"] for s in samples], [s["rationale"] for s in samples], records, images,
                            self.preprocess, rerank)

    def sample_outputs(self, images: torch.Tensor, records: list[Record], k: int, temperature: float = 0.7,
                       top_p: float = 1.0, max_new_tokens: int | None = None) -> list[dict]:
        """K sampled outputs per record (a record's K adjacent): ``text`` and its ``rationale``."""
        budget = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        texts = self.answer_batch(images, records, **budget, do_sample=True, temperature=temperature, top_p=top_p,
                                  num_return_sequences=k)
        return [{"text": t, "rationale": split_rationale(t) or ""} for t in texts]

    # ---- rationale probes (mmreason.diagnostics) ---------------------------------------------
    def answers_after(self, images: torch.Tensor, records: list[Record], evidence: list[str],
                      max_new_tokens: int = 96) -> list[dict]:
        """Each record's ``evidence`` teacher-forced as the start of its rationale; the model writes the
        rest (its conclusion) and its answer. Described responses (text, rationale, answer)."""
        forced = [thinking(e) for e in evidence]
        ids = self.generate_ids(images, records, max_new_tokens, continuations=forced)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=True)
        return [self.describe({"text": self.clean_output(f"{f} {t}")}) for f, t in zip(forced, texts)]

    @torch.no_grad()
    def answer_entropies(self, images: torch.Tensor, records: list[Record], rationales: list[str]
                         ) -> tuple[torch.Tensor, list[str]]:
        """For each (partial) rationale — K per record, a record's K adjacent — the entropy in bits of
        the answer's first token when the model must answer right after it, and that token's argmax."""
        k = per_record(len(rationales), len(records))
        repeated = [r for r in records for _ in range(k)]
        texts = [thinking(q, answer_next=True) for q in rationales]
        padded = self.processor.pad(self.processor.prompt_and_text(repeated, texts), left=True)
        ids, mask = padded["input_ids"].to(images.device), padded["attention_mask"].to(images.device)
        embeds = splice_image_features(self.lm.get_input_embeddings()(ids), ids, self.image_token_id,
                                       self.encode_images(images).repeat_interleave(k, dim=0))
        return self.next_token_entropy(embeds, mask)

    def next_token_entropy(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """The entropy in bits of the token after each left-padded row, and that token's argmax, decoded."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
        logits = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
        last = logits[:, -1]
        return entropy_bits(last), [self.tokenizer.decode([i]).strip() for i in last.argmax(-1).tolist()]

    def respond_early(self, images: torch.Tensor, records: list[Record], threshold: float,
                      max_new_tokens: int = 128) -> list[dict]:
        """Greedy generation that writes its rationale a sentence at a time and answers as soon as the
        answer's entropy after the sentences so far is below ``threshold`` bits (before the first
        sentence too, never after the concluding one, "…, so the answer is …", which states the answer
        anyway: the model then finishes as it would have); an answer given early is that most likely first
        token (one token answers every synthetic question; longer answers are cut to it). ``stopped_after`` says how many sentences
        were written, ``early`` whether the rationale was cut short."""
        sentence_end = self.tokenizer.convert_tokens_to_ids(".")
        if sentence_end is None or sentence_end == self.tokenizer.unk_token_id:
            raise ValueError("stop_entropy needs a tokenizer with '.' as a token to end rationale steps")
        close = self.tokenizer.convert_tokens_to_ids("</think>")
        evidence, out = [""] * len(records), [None] * len(records)
        steps, used = [0] * len(records), [1] * len(records)  # <think> is the first token written
        active = list(range(len(records)))
        while active:
            entropy, tokens = self.answer_entropies(images[active], [records[i] for i in active],
                                                    [evidence[i] for i in active])
            for i, h, token in zip(active, entropy.tolist(), tokens):
                if h < threshold:  # the answer is its first token, the one whose entropy was read
                    out[i] = {"text": f"{thinking(evidence[i], answer_next=True)} {token} </answer>",
                              "stopped_after": steps[i], "early": True}
            active = [i for i in active if out[i] is None]
            if not active:
                break
            forced = [thinking(evidence[i]) for i in active]
            ids = self.generate_ids(images[active], [records[i] for i in active],
                                    max(max_new_tokens - used[i] for i in active), continuations=forced,
                                    eos_token_id=[self.tokenizer.eos_token_id, sentence_end, close])
            finished = []
            for i, row in zip(active, ids.tolist()):
                written = [t for t in row if t != self.tokenizer.pad_token_id][: max_new_tokens - used[i]]
                if written and written[-1] == sentence_end and used[i] + len(written) < max_new_tokens:
                    evidence[i] = f"{evidence[i]} {self.tokenizer.decode(written)}".strip()
                    used[i] += len(written)
                    steps[i] += 1
                    if split_steps(evidence[i])[1] is None:
                        continue  # the next check comes after the next sentence
                # the model wrote its conclusion, ended its rationale or ran out of tokens: it goes on freely
                finished.append(i)
            if finished:
                forced = [thinking(evidence[i]) for i in finished]
                ids = self.generate_ids(images[finished], [records[i] for i in finished],
                                        max(max_new_tokens - used[i] for i in finished), continuations=forced)
                for i, f, row in zip(finished, forced, ids.tolist()):
                    rest = self.tokenizer.decode(row[: max_new_tokens - used[i]], skip_special_tokens=False)
                    out[i] = {"text": self.clean_output(f"{f} {rest}"), "stopped_after": steps[i], "early": False}
            active = [i for i in active if out[i] is None]
        return out

    def shared_prefill(self, embeds: torch.Tensor, mask: torch.Tensor, k: int):
        """One prefill per prompt, shared by its K samples: every prompt token but the last goes
        through the model once and the cache is repeated K times; ``generate`` goes on from the
        last token. Returns (cache, embeds, mask) for the B×K rows."""
        positions = (mask[:, :-1].cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
        prefix = self.lm(inputs_embeds=embeds[:, :-1], attention_mask=mask[:, :-1], position_ids=positions,
                         use_cache=True)
        prefix.past_key_values.batch_repeat_interleave(k)
        return prefix.past_key_values, embeds.repeat_interleave(k, dim=0), mask.repeat_interleave(k, dim=0)

    def clean_output(self, text: str) -> str:
        """Drop padding/EOS markers, keep the reasoning tags."""
        text = text.split(self.tokenizer.eos_token)[0]
        for token in (self.tokenizer.pad_token, self.tokenizer.bos_token):
            text = text.replace(token, "")
        return " ".join(text.split())


register_model("baseline-tiny-cot", "baseline", TINY_CONFIG,
               "2.0M-parameter ViT + Llama VLM writing a rationale before its answer (CPU-sized)",
               recipe="recipes/baseline/synth-tiny-cot.yaml")
register_model("baseline-tiny", "baseline", merge_config(TINY_CONFIG, {"output_format": "answer"}),
               "the same tiny VLM answering directly", recipe="recipes/baseline/synth-tiny.yaml")
