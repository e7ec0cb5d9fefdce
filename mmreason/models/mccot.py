"""MM-CoT / MC-CoT: a two-stage encoder–decoder that writes a rationale, then answers from it.

Each stage is a T5-style model whose encoder states are fused with image
features by gated cross-attention (:mod:`mmreason.layers.gated_fusion`). The
``rationale`` stage reads question + context + options and writes
``solution : …``; the ``answer`` stage reads the same plus a rationale and
writes ``the answer is …``; a ``direct`` stage answers without a rationale.
Stages share the architecture but not weights. The rationale the answer stage
reads at evaluation is generated autoregressively (``generated``); upstream's
teacher-forced argmax (``teacher_forced``) and the gold rationale (``gold``)
are there to compare against. ``templates`` picks the zoo's prompt wording (``zoo``) or
MM-CoT's own (``mm-cot``, for checkpoints converted from amazon-science/mm-cot).

MC-CoT's self-consistency training runs the decoder ``passes`` times on one
encoding (dropout on) and fuses the logits (:mod:`mmreason.layers.logit_voting`).
Inference-time voting samples K rationales in one batch, answers each, and
majority-votes the answers, reporting the vote share as confidence.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from mmreason.data.preprocess import Preprocess
from mmreason.data.schema import Record
from mmreason.eval.answers import extract_answer_span
from mmreason.eval.step_utility import entropy_bits
from mmreason.eval.voting import per_record, scored_votes
from mmreason.layers.gated_fusion import GatedCrossAttentionFusion
from mmreason.layers.language import build_language_model
from mmreason.layers.logit_voting import fuse_pass_logits
from mmreason.layers.vision import build_vision_tower
from mmreason.models.base import ANSWERS, CACHED_FEATURES, PIPELINE, REASONS, ZooModel
from mmreason.models.baseline import TINY_CONFIG as BASELINE_TINY
from mmreason.models.config_schema import LANGUAGE, LEAF, PREPROCESS, VISION
from mmreason.models.mccot_processor import MCCoTProcessor
from mmreason.models.processor import IGNORE_INDEX
from mmreason.text.prompts import answer_cue, rationale_target, strip_rationale_cue
from mmreason.text.tokenizer import build_tokenizer
from mmreason.zoo import merge_config, register_family, register_model

log = logging.getLogger(__name__)

STAGES = ("rationale", "answer", "direct")
RATIONALE_SOURCES = ("generated", "teacher_forced", "gold")

TINY_CONFIG = {
    "vision": copy.deepcopy(BASELINE_TINY["vision"]),
    "language": {"config": {"model_type": "t5", "d_model": 192, "d_kv": 48, "d_ff": 512, "num_layers": 3,
                            "num_decoder_layers": 3, "num_heads": 4, "dropout_rate": 0.1,
                            "feed_forward_proj": "gated-gelu", "tie_word_embeddings": True}},
    "tokenizer": "synth-word",
    "preprocess": copy.deepcopy(BASELINE_TINY["preprocess"]),
    "stages": ["rationale", "answer"],
    "max_length": 256,
    "max_target_length": 192,
    "self_consistency": {"passes": 1, "alpha": 0.5, "vote": "soft"},
}

# Real scale (upstream's MC-CoT-F-Base): FLAN-T5-base and a frozen ImageNet ViT-B/16 from timm.
BASE_CONFIG = {
    "vision": {"name": "vit_base_patch16_224", "pretrained": True, "frozen": True},
    "language": {"path": "google/flan-t5-base"},
    "tokenizer": "from_language",
    "preprocess": {"image_size": 224, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    "stages": ["rationale", "answer"],
    "max_length": 512,
    "max_target_length": 512,
    "self_consistency": {"passes": 1, "alpha": 0.5, "vote": "soft"},
}


class MCCoTStage(nn.Module):
    """One stage: vision encoder → gated fusion into the T5 encoder's states → T5 decoder."""

    def __init__(self, config: dict, tokenizer):
        super().__init__()
        vision = config["vision"]
        self.vision = build_vision_tower(vision)
        self.frozen_vision = bool(vision.get("frozen", False))
        if self.frozen_vision:
            self.vision.requires_grad_(False)
        language = config["language"]
        self.t5 = build_language_model(language.get("config"), language.get("path"), vocab_size=len(tokenizer),
                                       kind="seq2seq")
        if (language.get("config") or {}).get("tie_word_embeddings") is False:
            self._untie_lm_head()
        elif language.get("path") is not None and self.t5.lm_head.weight is not self.t5.shared.weight:
            self.t5.config.tie_word_embeddings = False  # a loaded FLAN-T5's own output table: say so in exports
        for name in ("pad_token_id", "decoder_start_token_id"):
            setattr(self.t5.config, name, tokenizer.pad_token_id)
            setattr(self.t5.generation_config, name, tokenizer.pad_token_id)
        self.t5.config.eos_token_id = self.t5.generation_config.eos_token_id = tokenizer.eos_token_id
        self.fusion = GatedCrossAttentionFusion(self.t5.config.d_model, self.vision.width)

    def _untie_lm_head(self) -> None:
        """T5 v1.1 / FLAN-T5 keep an output table apart from the input one; transformers 5 ties them whenever
        a T5 is built from a config, so a config that says ``tie_word_embeddings: false`` gets its own."""
        self.t5.lm_head.weight = nn.Parameter(self.t5.shared.weight.detach().clone())
        self.t5.config.tie_word_embeddings = False  # kept in the export's config, and no later tie_weights()

    def image_features(self, visual: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) through the encoder, or cached features (B, N, D) as they are."""
        if visual.dim() == 3:
            return visual
        if self.frozen_vision:
            with torch.no_grad():
                return self.vision.eval()(visual)
        return self.vision(visual)

    def encode(self, features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Encoder + fusion, once per batch whatever the number of decoder passes or samples."""
        states = self.t5.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return BaseModelOutput(last_hidden_state=self.fusion(states, features))

    def pass_logits(self, encoded: BaseModelOutput, attention_mask: torch.Tensor, labels: torch.Tensor,
                    passes: int) -> torch.Tensor:
        """(passes, B, T, V) teacher-forced logits; dropout (when training) makes the passes differ.

        The passes run as one decoder call on the batch repeated ``passes`` times: dropout
        masks are drawn per row, so this is K independent passes with larger matrix products."""
        states = encoded.last_hidden_state.repeat(passes, 1, 1)
        logits = self.t5(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                         attention_mask=attention_mask.repeat(passes, 1), labels=labels.repeat(passes, 1)).logits
        return logits.view(passes, *labels.shape, -1)

    def generate(self, encoded: BaseModelOutput, attention_mask: torch.Tensor, max_new_tokens: int,
                 samples: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                 sample: bool | None = None) -> torch.Tensor:
        """``samples`` sequences per input; sampled (``sample``, default: when several), else greedy."""
        sample = samples > 1 if sample is None else sample
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if sample else {
            "do_sample": False}
        return self.t5.generate(encoder_outputs=encoded, attention_mask=attention_mask,
                                max_new_tokens=max_new_tokens, num_return_sequences=samples, **sampling)


@register_family("mccot")
class MCCoT(ZooModel):
    """The pipeline of stages (``rationale`` + ``answer``, or ``direct``) with one tokenizer."""

    config_schema = {"vision": VISION, "language": LANGUAGE, "init_language": LANGUAGE, "tokenizer": LEAF,
                     "preprocess": PREPROCESS, "stages": LEAF, "train_stage": LEAF, "max_length": LEAF,
                     "max_target_length": LEAF, "self_consistency": dict.fromkeys(("passes", "alpha", "vote"), LEAF),
                     "templates": LEAF}
    init_parts = ("vision",)
    # a stage added to an export starts from init_language: its architecture, or a run's pretrained path
    fine_tune_options = ("init_language",)
    response_options = ("votes", "temperature", "top_p", "rationale_source", "max_answer_tokens", "rerank")

    def __init__(self, config: dict, tokenizer=None):
        super().__init__()
        self.config = copy.deepcopy(config)
        # what a stage added later starts from: the original language spec (a pretrained path survives export)
        self.config.setdefault("init_language", copy.deepcopy(config["language"]))
        config = self.config
        stages = list(config.get("stages", ["rationale", "answer"]))
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages:
            raise ValueError(f"stages must be a non-empty list of {STAGES}, got {stages!r}")
        self.preprocess = Preprocess.from_dict({**Preprocess().to_dict(), **config.get("preprocess", {})})
        if tokenizer is None:
            spec = config.get("tokenizer", "synth-word")
            tokenizer = build_tokenizer(config["language"].get("path") if spec == "from_language" else spec)
        self.tokenizer = tokenizer
        max_length = int(config.get("max_length", 256))
        self.max_target_length = int(config.get("max_target_length", 192))
        consistency = config.get("self_consistency", {})
        self.passes = int(consistency.get("passes", 1))
        self.alpha = float(consistency.get("alpha", 0.5))
        self.vote = consistency.get("vote", "soft")
        self.stages = nn.ModuleDict({name: MCCoTStage(config, self.tokenizer) for name in stages})
        self.train_stage = config.get("train_stage", stages[-1])
        if self.train_stage not in self.stages:
            raise ValueError(f"train_stage {self.train_stage!r} is not one of this model's stages {stages}")
        self.templates = config.get("templates", "zoo")
        self.processor = MCCoTProcessor(self.tokenizer, max_length, self.max_target_length, self.train_stage,
                                        self.templates)

    @property
    def lm(self) -> nn.Module:
        """The first stage's language model (every stage has its architecture)."""
        return next(iter(self.stages.values())).t5

    def part_modules(self, part: str) -> list[nn.Module]:
        """``vision``: every stage's image encoder (one encoder, copied into each stage)."""
        if part == "vision":
            return [stage.vision for stage in self.stages.values()]
        return super().part_modules(part)

    def capability_set(self) -> frozenset[str]:
        """A rationale-only stage answers nothing; cached features stand in for images only when
        every stage's encoder is frozen."""
        answers = {ANSWERS} if "answer" in self.stages or "direct" in self.stages else set()
        cached = {CACHED_FEATURES} if all(stage.frozen_vision for stage in self.stages.values()) else set()
        reasons = {REASONS} if {"rationale", "answer"} <= set(self.stages) else set()
        return frozenset({PIPELINE} | answers | cached | reasons)

    @property
    def vision(self) -> nn.Module:
        """The first stage's image encoder (what ``mmreason data features`` caches)."""
        return next(iter(self.stages.values())).vision

    def add_stage(self, name: str) -> MCCoTStage:
        """A new stage (e.g. the answer stage next to a trained rationale stage): its language model
        starts from ``init_language`` (pretrained weights when it names a path; an export keeps only the
        architecture, so a run that wants them again sets ``model_config.init_language``), its vision
        encoder from the first stage's (the same frozen encoder, so cached features stay valid)."""
        if name not in STAGES or name in self.stages:
            raise ValueError(f"cannot add stage {name!r} to stages {list(self.stages)}")
        if self.config["init_language"].get("path") is None:
            log.info("stage %r starts from freshly initialised %s weights (init_language names no pretrained path)",
                     name, self.config["init_language"].get("config", {}).get("model_type", "language model"))
        config = {**self.config, "language": self.config["init_language"]}
        stage = MCCoTStage(config, self.tokenizer).to(next(self.parameters()).device)
        stage.vision.load_state_dict(self.vision.state_dict())
        self.stages[name] = stage
        self.config["stages"] = list(self.stages)
        return stage

    def set_train_stage(self, name: str) -> None:
        """Train ``name``; every other stage is frozen."""
        if name not in self.stages:
            raise ValueError(f"train_stage {name!r} is not one of this model's stages {list(self.stages)}")
        self.train_stage = self.config["train_stage"] = self.processor.train_stage = name
        for stage_name, stage in self.stages.items():
            stage.requires_grad_(stage_name == name)
            if stage_name == name and stage.frozen_vision:
                stage.vision.requires_grad_(False)

    def batch_processor(self) -> MCCoTProcessor:
        return self.processor

    def encoder_inputs(self, stage: str, records: list[Record], device,
                       rationales: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) of ``stage``'s encoder input on ``device``."""
        inputs = self.processor.encoder_inputs(self.processor.stage_inputs(stage, records, rationales))
        return inputs["input_ids"].to(device), inputs["attention_mask"].to(device)

    # ---- training -----------------------------------------------------------------------------
    def stage_logits(self, stage: str, visual: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Fused logits of ``stage`` on its gold targets (:meth:`MCCoTProcessor.stage_tensors`); in
        training mode the decoder runs ``passes`` times on one encoding."""
        module = self.stages[stage]
        encoded = module.encode(module.image_features(visual), input_ids, attention_mask)
        passes = self.passes if self.training else 1
        return fuse_pass_logits(module.pass_logits(encoded, attention_mask, labels, passes), self.alpha, self.vote)

    def batch_loss(self, visual: torch.Tensor, records: list[Record],
                   inputs: dict[str, torch.Tensor] | None = None) -> dict:
        """Cross-entropy of the training stage on the fused logits, with token accuracy and counts
        (``inputs``: the processor's tensors of ``records`` when a loader worker made them)."""
        if inputs is None:
            inputs = self.processor.training_inputs(records)
        inputs = {k: v.to(visual.device) for k, v in inputs.items()}
        rows = inputs.pop("rows")
        skipped, weight = len(records) - len(rows), 1.0
        if skipped:
            log.warning("skipped %d sample(s) without a rationale", skipped)
        if not len(rows):  # nothing to learn from: a zero loss keeps every rank's step in lockstep
            weight = 0.0
        elif skipped:
            visual = visual[rows]
        labels, mask = inputs["labels"], inputs["attention_mask"]
        logits = self.stage_logits(self.train_stage, visual, **inputs)
        loss = weight * F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        valid = labels != IGNORE_INDEX
        n_tokens = valid.sum()
        accuracy = ((logits.argmax(-1) == labels) & valid).sum() / n_tokens.clamp(min=1)
        return {"loss": loss, "token_accuracy": accuracy, "target_tokens": n_tokens,
                "tokens": mask.sum() + n_tokens, "skipped": skipped}

    # ---- inference ----------------------------------------------------------------------------
    def _decode(self, ids: torch.Tensor) -> list[str]:
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        return [" ".join(t.split()) for t in texts]

    @torch.no_grad()
    def rationales(self, visual: torch.Tensor, records: list[Record], source: str = "generated",
                   samples: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                   max_new_tokens: int | None = None, sample: bool | None = None) -> list[str]:
        """B×samples rationales (a record's samples adjacent), by ``source``:

        ``generated``: autoregressive decoding (greedy for one sample, sampled for several,
        unless ``sample`` says otherwise);
        ``teacher_forced``: upstream's protocol, the argmax of the decoder fed the gold rationale;
        ``gold``: the records' own rationales.
        """
        if source not in RATIONALE_SOURCES:
            raise ValueError(f"rationale source must be one of {RATIONALE_SOURCES}, got {source!r}")
        if source == "gold":
            texts = [r.rationale or "" for r in records]
        elif source == "teacher_forced":
            tensors = {k: v.to(visual.device) for k, v in self.processor.stage_tensors("rationale", records).items()}
            logits, labels = self.stage_logits("rationale", visual, **tensors), tensors["labels"]
            predicted = logits.argmax(-1).masked_fill(labels == IGNORE_INDEX, self.tokenizer.pad_token_id)
            texts = [strip_rationale_cue(t, self.templates) for t in self._decode(predicted)]
        else:
            module = self.stages["rationale"]
            ids, mask = self.encoder_inputs("rationale", records, visual.device)
            encoded = module.encode(module.image_features(visual), ids, mask)
            out = module.generate(encoded, mask, max_new_tokens or self.max_target_length, samples, temperature,
                                  top_p, sample)
            return [strip_rationale_cue(t, self.templates) for t in self._decode(out)]
        return [t for t in texts for _ in range(samples)]

    @torch.no_grad()
    def answers(self, visual: torch.Tensor, records: list[Record], rationales: list[str] | None = None,
                max_new_tokens: int = 24) -> list[str]:
        """Answer-stage (or direct-stage) texts; with ``rationales`` of K per record, B×K answers."""
        stage = "answer" if "answer" in self.stages else "direct"
        module = self.stages[stage]
        features = module.image_features(visual)
        if rationales is not None and len(rationales) != len(records):
            k = len(rationales) // len(records)
            records = [r for r in records for _ in range(k)]
            features = features.repeat_interleave(k, dim=0)
        ids, mask = self.encoder_inputs(stage, records, visual.device, rationales)
        return self._decode(module.generate(module.encode(features, ids, mask), mask, max_new_tokens))

    @torch.no_grad()
    def run(self, visual: torch.Tensor, records: list[Record], votes: int = 1, temperature: float = 0.7,
            top_p: float = 1.0, rationale_source: str = "generated", max_new_tokens: int | None = None,
            max_answer_tokens: int = 24, sample: bool | None = None, rerank=None) -> list[dict]:
        """The pipeline on a batch: per record {rationale, text, answer, confidence, votes}.

        With ``votes`` > 1, K rationales are sampled per record in one batched call, each is
        answered, and the majority answer wins; ``confidence`` is its share of the K votes. With
        ``rerank`` (a rationale scorer) each vote weighs its rationale's score instead of one.
        """
        if votes < 1:
            raise ValueError(f"votes must be at least 1, got {votes}")
        if votes > 1 and not self.can(ANSWERS):
            raise ValueError("voting needs an answer stage; this export holds only "
                             f"{list(self.stages)} (train one with stage: answer, init: {{from: this export}})")
        if rerank is not None and (votes == 1 or "rationale" not in self.stages or visual.dim() != 4):
            raise ValueError("rerank weighs the rationales of several votes: it needs votes > 1, a rationale "
                             "stage and images (not cached features)")
        has_rationale = "rationale" in self.stages
        rationales = self.rationales(visual, records, rationale_source, votes, temperature, top_p,
                                     max_new_tokens, sample) if has_rationale else None
        if not self.can(ANSWERS):
            return [{"rationale": q, "text": q, "answer": None, "confidence": None, "votes": []} for q in rationales]
        texts = self.answers(visual, records, rationales, max_answer_tokens)
        voted = scored_votes(texts, rationales or [None] * len(texts), records, visual, self.preprocess, rerank)
        return [{**v, "answer": extract_answer_span(v["text"])} for v in voted]

    def sample_outputs(self, visual: torch.Tensor, records: list[Record], k: int, temperature: float = 0.7,
                       top_p: float = 1.0, max_new_tokens: int | None = None) -> list[dict]:
        """K sampled rationales per record (adjacent), each answered: ``text`` and ``rationale``."""
        rationales = self.rationales(visual, records, "generated", k, temperature, top_p, max_new_tokens, sample=True)
        texts = self.answers(visual, records, rationales)
        return [{"text": t, "rationale": q} for t, q in zip(texts, rationales)]

    # ---- rationale probes (mmreason.diagnostics) ---------------------------------------------
    @torch.no_grad()
    def answers_after(self, visual: torch.Tensor, records: list[Record], evidence: list[str],
                      max_new_tokens: int | None = None) -> list[dict]:
        """Each record's ``evidence`` teacher-forced as the start of the rationale stage's output; the stage
        writes the rest (its conclusion), and the answer stage answers from the whole rationale."""
        module = self.stages["rationale"]
        ids, mask = self.encoder_inputs("rationale", records, visual.device)
        encoded = module.encode(module.image_features(visual), ids, mask)
        prefixes = self.tokenizer([rationale_target(e, self.templates) for e in evidence],
                                  add_special_tokens=False)["input_ids"]
        rationales: list[str | None] = [None] * len(records)
        budget = max_new_tokens or self.max_target_length
        for length in sorted({len(p) for p in prefixes}):  # one call per prefix length: no decoder padding
            rows = [i for i, p in enumerate(prefixes) if len(p) == length]
            start = torch.tensor([[self.tokenizer.pad_token_id, *prefixes[i]] for i in rows], device=visual.device)
            out = module.t5.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoded.last_hidden_state[rows]),
                                     attention_mask=mask[rows], decoder_input_ids=start, max_new_tokens=budget,
                                     do_sample=False)
            for i, text in zip(rows, self._decode(out)):
                rationales[i] = strip_rationale_cue(text, self.templates)
        texts = self.answers(visual, records, rationales)
        return [{"rationale": q, "text": t, "answer": extract_answer_span(t)} for q, t in zip(rationales, texts)]

    @torch.no_grad()
    def answer_entropies(self, visual: torch.Tensor, records: list[Record], rationales: list[str]
                         ) -> tuple[torch.Tensor, list[str]]:
        """For each (partial) rationale — K per record, adjacent — the entropy in bits of the answer stage's
        first answer token after its answer cue (``the answer is``), and that token's argmax."""
        k = per_record(len(rationales), len(records))
        module = self.stages["answer"]
        repeated = [r for r in records for _ in range(k)]
        ids, mask = self.encoder_inputs("answer", repeated, visual.device, list(rationales))
        features = module.image_features(visual).repeat_interleave(k, dim=0)
        encoded = module.encode(features, ids, mask).last_hidden_state
        cues = self.tokenizer([answer_cue(r, self.templates) for r in repeated], add_special_tokens=False)["input_ids"]
        last = torch.empty(len(repeated), self.lm.config.vocab_size, device=visual.device)
        for length in sorted({len(c) for c in cues}):
            rows = [i for i, c in enumerate(cues) if len(c) == length]
            start = torch.tensor([[self.tokenizer.pad_token_id, *cues[i]] for i in rows], device=visual.device)
            logits = module.t5(encoder_outputs=BaseModelOutput(last_hidden_state=encoded[rows]),
                               attention_mask=mask[rows], decoder_input_ids=start).logits
            last[rows] = logits[:, -1].float()
        return entropy_bits(last), [self.tokenizer.decode([i]).strip() for i in last.argmax(-1).tolist()]

    def respond(self, visual: torch.Tensor, records: list[Record], max_new_tokens: int | None = None,
                **run_kwargs) -> list[dict]:
        """The pipeline's results (:meth:`run`), what evaluation scores; a confidence only where answers
        were voted (one vote's share says nothing)."""
        results = self.run(visual, records, max_new_tokens=max_new_tokens, **run_kwargs)
        return results if run_kwargs.get("votes", 1) > 1 else [{**r, "confidence": None} for r in results]

    def writes_rationales(self) -> bool:
        return "rationale" in self.stages

    def answer_batch(self, visual: torch.Tensor, records: list[Record], max_new_tokens: int | None = None,
                     **run_kwargs) -> list[str]:
        """Final texts ready for scoring."""
        return [r["text"] for r in self.respond(visual, records, max_new_tokens, **run_kwargs)]

    def predict(self, image, question: str | None = None, choices: list[str] | None = None,
                max_new_tokens: int | None = None, **run_kwargs) -> dict:
        """Rationale then answer for one image (path, bytes or PIL); the rationale is generated."""
        if run_kwargs.get("rationale_source", "generated") != "generated":
            raise ValueError("predict generates its rationale; rationale_source "
                             f"{run_kwargs['rationale_source']!r} needs a gold rationale (use `mmreason eval`)")
        return super().predict(image, question, choices, max_new_tokens, **run_kwargs)

    def describe(self, response: dict) -> dict:
        return response


register_model("mccot-tiny", "mccot", TINY_CONFIG,
               "two-stage MM-CoT: tiny ViT + gated fusion + T5, rationale then answer (CPU-sized)",
               recipe="recipes/mccot/synth-tiny-rationale.yaml")
register_model("mccot-tiny-direct", "mccot", merge_config(TINY_CONFIG, {"stages": ["direct"]}),
               "the same tiny encoder-decoder answering without a rationale", recipe="recipes/mccot/synth-tiny-direct.yaml")
register_model("mccot-base", "mccot", BASE_CONFIG,
               "two-stage MC-CoT at upstream scale: FLAN-T5-base + frozen ViT-B/16 (downloads both once)",
               recipe="recipes/mccot/scienceqa-base.yaml")
