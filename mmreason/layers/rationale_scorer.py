"""A cross-encoder that reads an image, a question and a rationale and gives one logit: is the rationale right?

Rationale Ranking (Hartill et al., RR/RATD) scores ``[CLS] question [SEP] rationale [SEP]`` with a
BERT-style encoder and a linear head on the ``[CLS]`` token, trained with binary cross-entropy on
right and wrong rationales. Whether a visual rationale is right depends on the picture, so here the
image's patch tokens, projected to the encoder's width, come right after ``[CLS]``: image, question
and rationale attend to one another in the encoder's self-attention. The encoder is transformers'
``BertModel`` built from a config, fed ``inputs_embeds``; its learned positions number the image
tokens too, and its token types tell the question part (0, image included) from the rationale (1).
:class:`DecoderRationaleScorer` reads the same with a decoder language model instead, so that a scorer
can start from a trained VLM's vision projector and language model.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel

from mmreason.layers.language import build_language_model
from mmreason.layers.projector import build_projector


def image_rows(images: torch.Tensor, rows: torch.Tensor | None, n_rows: int) -> torch.Tensor:
    """The projected image tokens each text row reads (``rows``: the image of each row; default: row i reads
    image i), checked against the number of rows."""
    images = images if rows is None else images[rows]
    if images.shape[0] != n_rows:
        raise ValueError(f"got {images.shape[0]} images for {n_rows} text rows; pass rows= to say "
                         "which image each row reads")
    return images


class RationaleScorer(nn.Module):
    """Args:
    vision_width: width of the image features it is given.
    config: ``BertConfig`` settings (``hidden_size``, ``num_hidden_layers``, …); ``vocab_size`` is
        raised to ``vocab_size`` when smaller.
    vocab_size: the tokenizer's size.
    projector: how image features become encoder-width tokens (:func:`~mmreason.layers.projector.build_projector`).
    """

    def __init__(self, vision_width: int, config: dict, vocab_size: int, projector: str = "mlp2x_gelu"):
        super().__init__()
        config = {**config, "vocab_size": max(vocab_size, int(config.get("vocab_size", 0)))}
        self.encoder = BertModel(BertConfig(**config), add_pooling_layer=False)
        hidden = self.encoder.config.hidden_size
        self.projector = build_projector(projector, vision_width, hidden)
        self.head = nn.Linear(hidden, 1)

    @property
    def max_positions(self) -> int:
        """The longest sequence it reads, image tokens included."""
        return self.encoder.config.max_position_embeddings

    def forward(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """One logit per text row: (P,).

        ``image_features``: (B, N, D) patch features; ``input_ids``/``attention_mask``/``token_type_ids``:
        (P, L) rows of ``[CLS] question [SEP] rationale [SEP]``; ``rows``: (P,) the image of each text row
        (default: row i reads image i), so an image read against K rationales is projected once.
        """
        images = image_rows(self.projector(image_features), rows, len(input_ids))
        n_image, length = images.shape[1], input_ids.shape[1] + images.shape[1]
        if length > self.max_positions:
            raise ValueError(f"{n_image} image tokens + {input_ids.shape[1]} text tokens exceed the encoder's "
                             f"{self.max_positions} positions; shorten the text or build with more positions")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        text = self.encoder.get_input_embeddings()(input_ids)
        embeds = torch.cat([text[:, :1], images.to(text.dtype), text[:, 1:]], dim=1)
        visible = attention_mask.new_ones(attention_mask.shape[0], n_image)
        mask = torch.cat([attention_mask[:, :1], visible, attention_mask[:, 1:]], dim=1)
        types = torch.cat([token_type_ids[:, :1], token_type_ids.new_zeros(visible.shape), token_type_ids[:, 1:]],
                          dim=1)
        hidden = self.encoder(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types).last_hidden_state
        return self.head(hidden[:, 0]).squeeze(-1)


class DecoderRationaleScorer(nn.Module):
    """The same reading with a decoder language model (a VLM's, so a scorer can start from a model that
    already reads these images and writes these rationales): image tokens after the first token, then the
    question and rationale as that VLM's prompt and ``<think>`` part; the last token's final hidden state,
    which has read everything before it, goes to the linear head.

    Args: ``vision_width``; ``language``: a language model config (``model_type`` …) for
    :func:`~mmreason.layers.language.build_language_model`; ``vocab_size``; ``projector``.
    """

    def __init__(self, vision_width: int, language: dict, vocab_size: int, projector: str = "mlp2x_gelu"):
        super().__init__()
        self.lm = build_language_model(language, vocab_size=vocab_size)
        hidden = self.lm.config.hidden_size
        self.projector = build_projector(projector, vision_width, hidden)
        self.head = nn.Linear(hidden, 1)

    @property
    def max_positions(self) -> int:
        return self.lm.config.max_position_embeddings

    def forward(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """One logit per right-padded text row (``token_type_ids`` unused: a decoder reads text in order)."""
        images = image_rows(self.projector(image_features), rows, len(input_ids))
        text = self.lm.get_input_embeddings()(input_ids)
        embeds = torch.cat([text[:, :1], images.to(text.dtype), text[:, 1:]], dim=1)
        mask = torch.cat([attention_mask[:, :1], attention_mask.new_ones(images.shape[:2]), attention_mask[:, 1:]],
                         dim=1)
        hidden = self.lm.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        last = mask.sum(1) - 1  # right padding: the last real token of each row
        return self.head(hidden[torch.arange(len(hidden), device=hidden.device), last]).squeeze(-1)
