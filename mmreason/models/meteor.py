"""Meteor: a small Mamba traverses the rationale, and the backbone answers from its `<tor>` states.

A long rationale is costly in the backbone's context. Meteor (Lee et al., NeurIPS 2024) lets
a small embedder read image + question (+ the rationale, during its first
training step) with N `<tor>` tokens in it; its hidden states at those N
positions, projected to the backbone width, replace the embeddings of N `<tor>`
tokens at the head of the backbone's prompt. At inference the embedder sees
bare `<tor>` tokens and must reconstruct rationale-like features from image and
question alone.

Everything else is the baseline VLM (vision encoder → projector → decoder LM,
tokenizer, preprocessing, batched generation), subclassed here. The vision
encoder runs once per batch; its patch tokens feed both the backbone (baseline
projector) and the embedder (a second projector to the embedder's width).

Prompts (:mod:`mmreason.models.meteor_processor`; word tokenizer: "rationale" is not in its
vocabulary, so the embedder's cue is the template's existing ``solution :``).

Training (``step``; upstream released no training code, so this is our reading):

* step 1 (traversal pre-training): the backbone VLM (vision encoder, its projector and
  the LM) is frozen, so its inputs and weights stay those it was trained with; the embedder reads
  the rationale with N `<tor>` placed by :func:`insert_tor`, and the backbone,
  given the N injected vectors and the user prompt, must write the whole
  rationale (the baseline's ``cot`` target, ``<think> … </think> <answer> … </answer>``).
  Each `<tor>` state summarises the text before it (the embedder is causal), so
  the N vectors are a compressed rationale the backbone learns to expand.
  Samples whose rationale is too short for the placement are skipped and counted.
* step 2: the embedder reads bare `<tor>` tokens, everything trains and the
  target is the answer (the baseline's ``answer`` target).

With a traversal embedder the step picks the target (``output_format`` follows
it). A frozen backbone that cannot already write rationales cannot learn to
expand them, so the tiny recipes start the backbone from a rationale-SFT
baseline export (``init`` with parts vision, projector, language; see mmreason.build), as upstream starts
from a pretrained LLM. ``embedder: none`` is the baseline VLM (same parts, prompts and logits: the
"no Mamba" ablation); ``transformer`` is the embedder ablation. The backbone
never generates `<image>` or `<tor>`: generation suppresses both, in every mode.
Mamba computes in float32 whatever the autocast (see :mod:`mmreason.layers.mamba`).

Released Meteor (``mmreason convert meteor``) needs two settings the zoo's own models leave
off: ``partial_lora`` (rank, alpha, targets, dropout) wraps those projections of the backbone
LM in low-rank updates applied only at image tokens (:mod:`mmreason.layers.partial_lora`), and
``traversal.prompt`` is the embedder's template (``<image>`` once, ``{question}``, ``{choices}``,
``{tor}``: the bare `<tor>` run, written without spaces, or the rationale holding them) in place of
the zoo's. A backbone writing ``plain`` answers keeps them at step 2.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import MambaConfig

from mmreason.data.schema import Record
from mmreason.layers.language import resolve_path, splice_image_features
from mmreason.layers.mamba import MambaStack
from mmreason.layers.partial_lora import apply_partial_lora
from mmreason.layers.projector import build_projector
from mmreason.models.baseline import TINY_CONFIG as BASELINE_TINY
from mmreason.models.baseline import VisionLanguageModel
from mmreason.models.config_schema import ANY, LEAF, VLM
from mmreason.models.meteor_processor import MeteorProcessor, TemplatedMeteorProcessor
from mmreason.text.prompts import PROMPT
from mmreason.text.tor import PLACEMENTS, TOR_TOKEN
from mmreason.zoo import merge_config, register_family, register_model

EMBEDDERS = ("mamba", "transformer", "none")
STEPS = (1, 2)
DEFAULT_TRAVERSAL = {
    "embedder": "mamba",
    "mamba": {"hidden_size": 128, "state_size": 16, "num_hidden_layers": 2, "expand": 2},
    "transformer": {},  # num_layers (default: mamba's), num_heads (4), dim_feedforward (4 × width)
    "num_tor": 10,
    "placement": "even",
    "path": None,  # a Mamba checkpoint folder (e.g. state-spaces/mamba-130m-hf); its fields replace `mamba`
    "seed": 0,  # of the placement draws (`random` placement)
    "prompt": None,  # the embedder's template (released Meteor's); None: the zoo's
}
PARTIAL_LORA = {"rank": LEAF, "alpha": LEAF, "targets": LEAF, "dropout": LEAF}

# The baseline's tiny VLM + a 2-layer Mamba of width 64, state 4 (fwd+bwd ≈ 0.9 s for 64 prompts of
# ~130 tokens on one contended core; state 8 tripled that). N = 10 as upstream: the benchmark's long
# rationales (107+ words) all fit an even placement of 10 (short ones, 16+ words, would lose a quarter).
TINY_CONFIG = merge_config(BASELINE_TINY, {
    "step": 1,
    "traversal": {"embedder": "mamba", "mamba": {"hidden_size": 64, "state_size": 4, "num_hidden_layers": 2,
                                                 "expand": 2}, "num_tor": 10, "placement": "even"},
})


def token_mask(ids: torch.Tensor, token_id: int, count: int, token: str) -> torch.Tensor:
    """Where ``token`` sits in ``ids`` (B, L); every row must hold exactly ``count`` of them."""
    mask = ids == token_id
    counts = mask.sum(dim=1)
    if not bool((counts == count).all()):
        raise ValueError(f"each sequence needs exactly {count} {token} tokens, found {counts.tolist()}")
    return mask


class CausalTransformerEmbedder(nn.Module):
    """The embedder ablation: a causal pre-norm transformer encoder with its own token embeddings.

    No position embeddings: the causal mask orders the tokens, as Mamba's recurrence does.
    Right padding needs no key mask (real tokens never attend to later pads).
    """

    def __init__(self, vocab_size: int, width: int, num_layers: int, num_heads: int = 4,
                 dim_feedforward: int | None = None):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, width)
        layer = nn.TransformerEncoderLayer(width, num_heads, dim_feedforward or 4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(width), enable_nested_tensor=False)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        length = inputs_embeds.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(length, inputs_embeds.device, inputs_embeds.dtype)
        return self.encoder(inputs_embeds, mask=causal, is_causal=True)


def load_mamba(path: str, vocab_size: int) -> MambaStack:
    """A transformers Mamba checkpoint folder (``pkg:NAME`` allowed) as a MambaStack with embeddings,
    its table resized to ``vocab_size`` (the backbone tokenizer's ids, not the checkpoint's)."""
    from transformers import MambaModel

    pretrained = MambaModel.from_pretrained(resolve_path(path))
    pretrained.resize_token_embeddings(vocab_size)
    pretrained.config.vocab_size = vocab_size
    stack = MambaStack(pretrained.config, with_embeddings=True)
    stack.load_state_dict(pretrained.state_dict())
    return stack


@register_family("meteor")
class Meteor(VisionLanguageModel):
    """The baseline VLM plus a traversal embedder whose `<tor>` states are injected into the backbone.

    Extra config (``traversal`` and ``step``) is described in the module docstring and
    ``DEFAULT_TRAVERSAL``. Parts: ``traversal`` (MambaStack, CausalTransformerEmbedder or None),
    ``traversal_projector`` (vision → embedder width), ``tor_projector`` (embedder → backbone width).
    """

    response_options = ()
    probes_rationales = False  # its rationale is traversal embeddings, not words
    config_schema = {**VLM, "partial_lora": PARTIAL_LORA, "step": LEAF,
                     "traversal": {"embedder": LEAF, "mamba": ANY, "transformer": ANY, "num_tor": LEAF,
                                   "placement": LEAF, "path": LEAF, "seed": LEAF, "prompt": LEAF}}
    fine_tune_options = ("step",)

    def __init__(self, config: dict, tokenizer=None):
        super().__init__(config, tokenizer)
        lora = config.get("partial_lora")
        self.image_positions = apply_partial_lora(self.lm, **lora) if lora else None
        spec = merge_config(DEFAULT_TRAVERSAL, config.get("traversal", {}))
        if spec["embedder"] not in EMBEDDERS:
            raise ValueError(f"traversal.embedder must be one of {EMBEDDERS}, got {spec['embedder']!r}")
        if spec["placement"] not in PLACEMENTS:
            raise ValueError(f"traversal.placement must be one of {PLACEMENTS}, got {spec['placement']!r}")
        if self.num_tor < 1 or (self.placement == "even" and self.num_tor < 2):
            raise ValueError(f"traversal.num_tor must be >= 1 (>= 2 for placement 'even'), got {self.num_tor}")
        self.tor_token_id = self.processor.tor_token_id
        self.traversal = self._build_traversal(spec)
        if self.traversal is not None:
            width = self.traversal.embeddings.embedding_dim
            self.traversal_projector = build_projector("mlp2x_gelu", self.vision.width, width)
            self.tor_projector = build_projector("mlp2x_gelu", width, self.lm.config.hidden_size)
        self.step = config.get("step", 1)

    @property
    def num_tor(self) -> int:
        return self.processor.num_tor

    @property
    def placement(self) -> str:
        return self.processor.placement

    def build_processor(self, config: dict) -> MeteorProcessor:
        spec = merge_config(DEFAULT_TRAVERSAL, config.get("traversal", {}))
        template = {"traversal_template": spec["prompt"]} if spec["prompt"] else {}
        return (TemplatedMeteorProcessor if template else MeteorProcessor)(
            self.tokenizer, self.num_image_tokens, int(config.get("max_length", 512)),
            config.get("output_format", "cot"), spec["embedder"] != "none", int(spec["num_tor"]),
            spec["placement"], spec["seed"], config.get("step", 1) == 1, config.get("prompt", PROMPT),
            **template)

    def _build_traversal(self, spec: dict) -> nn.Module | None:
        """The embedder; a checkpoint's Mamba fields replace ``traversal.mamba`` in ``self.config``
        (and ``path`` is dropped) so an export rebuilds the same shapes offline."""
        vocab_size = len(self.tokenizer)
        if spec["embedder"] == "none":
            return None
        if spec["embedder"] == "mamba" and spec["path"]:
            stack = load_mamba(spec["path"], vocab_size)
            fields = {k: v for k, v in stack.config.to_dict().items() if k != "vocab_size"}
            self.config["traversal"] = {**self.config.get("traversal", {}), "mamba": fields, "path": None}
            return stack
        mamba = MambaConfig(**{**spec["mamba"], "vocab_size": vocab_size})
        if spec["embedder"] == "mamba":
            return MambaStack(mamba, with_embeddings=True)
        options = {"num_layers": mamba.num_hidden_layers, **spec["transformer"]}
        return CausalTransformerEmbedder(vocab_size, mamba.hidden_size, **options)

    @property
    def step(self) -> int:
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        """Step 1 freezes the backbone VLM and targets the rationale; step 2 trains all and targets the answer."""
        if value not in STEPS:
            raise ValueError(f"step must be one of {STEPS} (1: traversal pre-training, 2: answering), got {value!r}")
        self._step = self.config["step"] = value
        self.processor.read_rationale = value == 1
        if self.traversal is not None:
            answer = "plain" if self.output_format == "plain" else "answer"  # a released model's answers
            self.output_format = self.config["output_format"] = "cot" if value == 1 else answer
            for part in (self.vision, self.projector, self.lm):
                part.requires_grad_(value != 1)

    def _traverse(self, patches: torch.Tensor, traversal_ids: torch.Tensor,
                  traversal_mask: torch.Tensor) -> torch.Tensor:
        """(B, N, backbone width): embedder states at the `<tor>` positions, in order, projected."""
        embeds = self.traversal.embeddings(traversal_ids)
        embeds = splice_image_features(embeds, traversal_ids, self.image_token_id, self.traversal_projector(patches))
        states = self.traversal(embeds, traversal_mask)
        mask = token_mask(traversal_ids, self.tor_token_id, self.num_tor, TOR_TOKEN)
        return self.tor_projector(states[mask].view(len(traversal_ids), self.num_tor, -1))

    def tor_features(self, images: torch.Tensor, records: list[Record], with_rationale: bool) -> torch.Tensor:
        """(B, N, backbone width) `<tor>` features, read with or without the rationale (diagnostics)."""
        self._require_traversal("tor_features")
        inputs = self.processor.traversal_inputs(records, with_rationale)
        inputs = {k: v.to(images.device) for k, v in inputs.items()}
        return self._traverse(self.vision(images), **inputs)

    def _require_traversal(self, what: str) -> None:
        if self.traversal is None:
            raise ValueError(f"{what} needs a traversal embedder; this model has traversal.embedder 'none'")

    # ---- the backbone's inputs --------------------------------------------------------------
    def embed(self, images: torch.Tensor, input_ids: torch.Tensor, traversal_ids: torch.Tensor | None = None,
              traversal_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone input embeddings: projected patches at `<image>`, projected embedder states at `<tor>`
        (and, with partial LoRA, the image positions its layers update)."""
        if self.image_positions is not None:
            self.image_positions.tokens = input_ids == self.image_token_id
        if self.traversal is None:
            return super().embed(images, input_ids)
        if traversal_ids is None:
            raise ValueError("Meteor.embed needs traversal_ids and traversal_mask "
                             "(from its processor's training_inputs, generation_inputs or traversal_inputs)")
        patches = self.vision(images)
        embeds = splice_image_features(self.lm.get_input_embeddings()(input_ids), input_ids, self.image_token_id,
                                       self.project_patches(patches))
        tor = self._traverse(patches, traversal_ids, traversal_mask)
        embeds[token_mask(input_ids, self.tor_token_id, self.num_tor, TOR_TOKEN)] = (
            tor.reshape(-1, tor.shape[-1]).to(embeds.dtype))
        return embeds

    def forward(self, images, input_ids, attention_mask, labels=None, traversal_ids=None, traversal_mask=None):
        embeds = self.embed(images, input_ids, traversal_ids, traversal_mask)
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)

    # ---- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, images: torch.Tensor, records: list[Record], max_new_tokens: int = 128,
                 **kwargs) -> list[str]:
        """The baseline's generation, the embedder reading bare `<tor>`; `<image>`/`<tor>` are suppressed."""
        kwargs["suppress_tokens"] = sorted({*(kwargs.get("suppress_tokens") or ()), self.image_token_id,
                                            self.tor_token_id})
        return super().generate(images, records, max_new_tokens, **kwargs)


register_model("meteor-tiny", "meteor", TINY_CONFIG,
               "Meteor: the tiny VLM as backbone + a 2-layer Mamba (width 64) traversing the rationale with "
               "10 <tor> (CPU-sized)", recipe="recipes/meteor/synth-tiny-step1.yaml")
