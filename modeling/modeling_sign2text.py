"""Sign2Text: sign-language clips (pose keypoints and/or per-frame features) to sentences.

The pose/feature sequence tower shared with the VLP model encodes a clip; a transformer decoder with causal
self-attention and cross-attention to the raw frame states writes the sentence. Two auxiliary losses shape the
encoder through their own projection heads, which the decoder never sees: CLIP between the pooled clip and a text
encoder's embedding of the target sentence, and SupCon between clips of the same sentence. The design notes traced
a decoder that ignored its input to an encoder whose clips all looked alike; these losses push clips apart. A CTC
head over the frame states (joint CTC/attention training, as in speech and gloss-based sign translation) makes
every frame state name the word being signed, in order, which is what the decoder has to read.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput

from configuration.configuration_sequence import SequenceEncoderConfig
from configuration.configuration_sign2text import Sign2TextConfig
from processing.pipeline_sign2text import Sign2TextPipeline
from .modeling_contrastive import EmbeddingMemory, clip_loss, supervised_contrastive_loss
from .modeling_freezing import FreezeAfterLoadingMixin
from .modeling_heads import ProjectionHead
from .modeling_pooling import masked_mean
from .modeling_sequence import SequenceEncoder


@dataclass
class Sign2TextOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        Weighted sum of the losses that could be computed from the inputs given and have a non-zero weight.
    generation_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Token cross-entropy of the decoder against `labels` (positions set to -100 are ignored).
    clip_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Symmetric InfoNCE between clips and their target sentences, when text inputs are given.
    supcon_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Supervised contrastive loss between clips sharing a sentence id, when `sentence_ids` are given.
    ctc_loss (`torch.FloatTensor` of shape `()`, *optional*):
        CTC loss of the gloss head's frame scores against `gloss_labels`, when they are given.
    logits (`torch.FloatTensor` of shape `(batch, target_length, vocab_size)`, *optional*):
        Next-token scores of the decoder, when it ran (given `decoder_input_ids` or `labels`).
    cache (`EncoderDecoderCache`, *optional*):
        Self- and cross-attention keys/values of the decoder, returned when caching.
    visual_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`):
        L2-normalised contrastive embedding of each clip (masked mean of the frame states, then the visual head).
    text_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`, *optional*):
        L2-normalised contrastive embedding of each target sentence.
    encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch, frames, hidden_size)`):
        Frame states of the sequence tower, which the decoder cross-attends to.
    """

    loss: torch.FloatTensor | None = None
    generation_loss: torch.FloatTensor | None = None
    clip_loss: torch.FloatTensor | None = None
    supcon_loss: torch.FloatTensor | None = None
    ctc_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    visual_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher-forcing decoder inputs: the start token, then the labels without their last one; -100 becomes pad."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


def make_gloss_labels(sentences: list[str], gloss_vocabulary: list[str]) -> torch.Tensor:
    """CTC targets of sentences: each lower-cased word's index in `gloss_vocabulary` plus one (0 is the blank),
    padded with -100; words outside the vocabulary are left out, since the CTC head cannot name them."""
    index = {gloss: position + 1 for position, gloss in enumerate(gloss_vocabulary)}
    rows = [[index[word] for word in sentence.lower().split() if word in index] for sentence in sentences]
    labels = torch.full((len(rows), max([1, *map(len, rows)])), -100, dtype=torch.long)
    for row, ids in enumerate(rows):
        labels[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return labels


def ctc_loss(frame_logits: torch.Tensor, frame_mask: torch.Tensor | None, gloss_labels: torch.Tensor) -> torch.Tensor:
    """CTC loss (blank = 0) of per-frame gloss scores against gloss sequences, averaged over the batch.

    Args:
        frame_logits: `(batch, frames, num_glosses + 1)` scores; index 0 is the blank.
        frame_mask: `(batch, frames)`, 1 for real frames. Masked frames (padding, or frames whose keypoints all went
            missing) are taken out of the sequence, so the remaining frames stay in order and contiguous.
        gloss_labels: `(batch, length)` gloss ids in `1..num_glosses`, padded with -100.

    Each clip's loss is divided by its number of glosses (`reduction="mean"`); alignments that cannot fit (fewer
    frames than the glosses need) give 0 instead of inf (`zero_infinity`).
    """
    log_probs = frame_logits.float().log_softmax(dim=-1)
    if frame_mask is None:
        input_lengths = torch.full((log_probs.shape[0],), log_probs.shape[1], dtype=torch.long, device=log_probs.device)
    else:
        keep = frame_mask.bool()
        order = torch.sort((~keep).int(), dim=1, stable=True).indices  # real frames first, in their order
        log_probs = log_probs.gather(1, order[..., None].expand_as(log_probs))
        input_lengths = keep.sum(dim=1)
    present = gloss_labels != -100
    return nn.functional.ctc_loss(
        log_probs.transpose(0, 1),
        gloss_labels[present],
        input_lengths,
        present.sum(dim=1),
        blank=0,
        reduction="mean",
        zero_infinity=True,
    )


class Sign2TextEncoder(nn.Module):
    """The sequence tower behind the interface `generate()` expects of an encoder: keyword inputs in, a
    `BaseModelOutput` out. `generate` runs it once and hands its output to every decoding step."""

    def __init__(self, config: SequenceEncoderConfig):
        super().__init__()
        self.sequence_encoder = SequenceEncoder(config)
        # `generate` passes its main input (the tensor it reads the batch size from) under this name.
        self.main_input_name = "keypoints" if config.use_keypoints else "frame_features"

    def forward(
        self,
        keypoints: torch.Tensor | None = None,
        frame_features: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> BaseModelOutput:
        """The flags are part of `generate`'s encoder protocol; the tower only exposes its last hidden state."""
        if output_attentions or output_hidden_states:
            raise NotImplementedError("The Sign2Text encoder does not return attentions or intermediate hidden states.")
        if keypoints is not None and keypoints.ndim != 4:
            raise ValueError(
                f"keypoints must have shape (batch, frames, num_keypoints, keypoint_dim), got "
                f"{tuple(keypoints.shape)}. A model with a keypoint stream needs `keypoints` in generate()."
            )
        if frame_mask is not None and not frame_mask.bool().any(dim=1).all():
            empty = (~frame_mask.bool().any(dim=1)).nonzero().flatten().tolist()
            raise ValueError(f"Clips {empty} have no unmasked frame; the decoder would have nothing to attend to.")
        return BaseModelOutput(last_hidden_state=self.sequence_encoder(keypoints, frame_features, frame_mask))


class Sign2TextAttention(nn.Module):
    """Multi-head attention with a key/value cache. Self-attention appends the new positions' keys/values at every
    step; cross-attention computes them from the encoder states on the first step and reuses them afterwards."""

    def __init__(self, config: Sign2TextConfig, layer_idx: int, is_cross_attention: bool):
        super().__init__()
        hidden_size = config.sequence_config.hidden_size
        self.num_heads = config.decoder_attention_heads
        self.head_dim = hidden_size // self.num_heads
        self.dropout = config.decoder_dropout
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        return states.view(*states.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
    ) -> torch.Tensor:
        """`attention_mask` is boolean, True where a query may attend, broadcastable to `(batch, heads, q, k)`."""
        query = self._split_heads(self.q_proj(hidden_states))
        if self.is_cross_attention and cache is not None and cache.is_updated.get(self.layer_idx):
            cached = cache.cross_attention_cache.layers[self.layer_idx]
            key, value = cached.keys, cached.values
        else:
            source = encoder_hidden_states if self.is_cross_attention else hidden_states
            key, value = self._split_heads(self.k_proj(source)), self._split_heads(self.v_proj(source))
            if cache is not None:
                layer_cache = cache.cross_attention_cache if self.is_cross_attention else cache.self_attention_cache
                key, value = layer_cache.update(key, value, self.layer_idx)
                if self.is_cross_attention:
                    cache.is_updated[self.layer_idx] = True
        attended = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(attended.transpose(1, 2).flatten(2))


class Sign2TextDecoderLayer(nn.Module):
    """Pre-norm block: causal self-attention, cross-attention to the frame states, feed-forward."""

    def __init__(self, config: Sign2TextConfig, layer_idx: int):
        super().__init__()
        hidden_size = config.sequence_config.hidden_size
        self.self_attn_norm = nn.LayerNorm(hidden_size)
        self.self_attn = Sign2TextAttention(config, layer_idx, is_cross_attention=False)
        self.cross_attn_norm = nn.LayerNorm(hidden_size)
        self.cross_attn = Sign2TextAttention(config, layer_idx, is_cross_attention=True)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.fc1 = nn.Linear(hidden_size, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, hidden_size)
        self.dropout = nn.Dropout(config.decoder_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        causal_mask: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        cache: EncoderDecoderCache | None,
    ) -> torch.Tensor:
        residual = self.self_attn(self.self_attn_norm(hidden_states), causal_mask, cache=cache)
        hidden_states = hidden_states + self.dropout(residual)
        residual = self.cross_attn(
            self.cross_attn_norm(hidden_states), encoder_attention_mask, encoder_hidden_states, cache
        )
        hidden_states = hidden_states + self.dropout(residual)
        residual = self.fc2(self.dropout(nn.functional.gelu(self.fc1(self.ffn_norm(hidden_states)))))
        return hidden_states + self.dropout(residual)


class Sign2TextDecoder(nn.Module):
    """Token embeddings plus learned positions, then decoder layers and a final norm."""

    def __init__(self, config: Sign2TextConfig):
        super().__init__()
        hidden_size = config.sequence_config.hidden_size
        self.max_target_length = config.max_target_length
        self.embed_tokens = nn.Embedding(config.vocab_size, hidden_size, padding_idx=config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_target_length, hidden_size)
        self.dropout = nn.Dropout(config.decoder_dropout)
        self.layers = nn.ModuleList(Sign2TextDecoderLayer(config, index) for index in range(config.decoder_layers))
        self.final_norm = nn.LayerNorm(hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
    ) -> torch.Tensor:
        """
        Args:
            input_ids: `(batch, length)` decoder inputs; with a cache, only the positions not cached yet.
            encoder_hidden_states: `(batch, frames, hidden_size)` raw frame states of the sequence tower.
            encoder_attention_mask: `(batch, frames)`, 1 for real frames.
            cache: filled in place with this call's keys and values.
        """
        past_length = cache.get_seq_length() if cache is not None else 0
        length = input_ids.shape[1]
        if past_length + length > self.max_target_length:
            raise ValueError(
                f"The decoder handles {self.max_target_length} positions (config.max_target_length) but got "
                f"{past_length + length}; generate with max_length <= {self.max_target_length + 1}."
            )
        positions = torch.arange(past_length, past_length + length, device=input_ids.device)
        hidden_states = self.dropout(self.embed_tokens(input_ids) + self.embed_positions(positions))
        causal_mask = torch.ones(length, past_length + length, dtype=torch.bool, device=input_ids.device).tril(
            past_length
        )
        cross_mask = None if encoder_attention_mask is None else encoder_attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            hidden_states = layer(hidden_states, causal_mask, encoder_hidden_states, cross_mask, cache)
        return self.final_norm(hidden_states)


class Sign2TextPreTrainedModel(PreTrainedModel):
    """Every parameter lives in a Linear, Embedding, LayerNorm or MultiheadAttention, all of which the default
    `_init_weights` (re-)initialises; there is no free-standing parameter that would need its own rule."""

    config_class = Sign2TextConfig
    base_model_prefix = "sign2text"
    main_input_name = "keypoints"


class Sign2TextModel(FreezeAfterLoadingMixin, Sign2TextPreTrainedModel, GenerationMixin):
    """Sequence tower → transformer decoder with a tied LM head, plus contrastive heads and a text encoder for the
    auxiliary losses. `generate(keypoints=..., frame_mask=...)` follows transformers' encoder–decoder protocol: the
    encoder runs once, `frame_mask` masks every step's cross-attention, and the decoder extends an
    `EncoderDecoderCache`."""

    _tied_weights_keys = {"lm_head.weight": "decoder.embed_tokens.weight"}
    hub_auto_classes = ("AutoModelForSeq2SeqLM",)  # `hub.save_for_hub` registers these besides AutoModel
    hub_pipelines = {"sign-language-translation": Sign2TextPipeline}  # `transformers.pipeline` tasks it registers

    def __init__(self, config: Sign2TextConfig):
        super().__init__(config)
        hidden_size = config.sequence_config.hidden_size
        self.encoder = Sign2TextEncoder(config.sequence_config)
        self.decoder = Sign2TextDecoder(config)
        self.lm_head = nn.Linear(hidden_size, config.vocab_size, bias=False)
        self.visual_projection = ProjectionHead(hidden_size, hidden_size, config.projection_dim)
        self.text_model = AutoModel.from_config(config.text_config)
        text_hidden_size = config.text_config.hidden_size
        self.text_projection = ProjectionHead(text_hidden_size, text_hidden_size, config.projection_dim)
        self.memory = EmbeddingMemory(config.memory_size, config.projection_dim) if config.memory_size else None
        glosses = config.gloss_vocabulary
        self.ctc_head = nn.Linear(hidden_size, len(glosses) + 1) if glosses else None
        self.post_init()
        self._apply_freezing()
        # Room for the start token plus a full-length target, so generation never outruns the position table.
        self.generation_config.max_length = config.max_target_length + 1

    def _apply_freezing(self) -> None:
        if self.config.freeze_text_encoder:
            self.text_model.requires_grad_(False)
            self.text_model.eval()

    def train(self, mode: bool = True) -> "Sign2TextModel":
        """A frozen text encoder stays in eval mode: its embeddings are fixed targets, not dropout-noised ones."""
        super().train(mode)
        if self.config.freeze_text_encoder:
            self.text_model.eval()
        return self

    def get_encoder(self, modality: str | None = None) -> Sign2TextEncoder:
        return self.encoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.decoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.decoder.embed_tokens = value

    def get_visual_features(
        self,
        keypoints: torch.Tensor | None = None,
        frame_features: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """L2-normalised contrastive embeddings `(batch, projection_dim)` of clips, e.g. for retrieval."""
        frame_states = self.encoder(keypoints, frame_features, frame_mask).last_hidden_state
        return self._embed_frames(frame_states, frame_mask)

    def _embed_frames(self, frame_states: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        return nn.functional.normalize(self.visual_projection(masked_mean(frame_states, frame_mask)), dim=-1)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised contrastive embeddings `(batch, projection_dim)` of sentences (mean over real tokens)."""
        hidden_states = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = masked_mean(hidden_states, attention_mask)
        return nn.functional.normalize(self.text_projection(pooled), dim=-1)

    def forward(
        self,
        keypoints: torch.Tensor | None = None,
        frame_features: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        text_input_ids: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        sentence_ids: torch.Tensor | None = None,
        gloss_labels: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: EncoderDecoderCache | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> Sign2TextOutput:
        r"""
        Args:
            keypoints: `(batch, frames, num_keypoints, keypoint_dim)` pose sequences.
            frame_features: `(batch, frames, feature_dim)` per-frame visual features.
            frame_mask: `(batch, frames)`, 1 for real frames; masks the pooling and the decoder's cross-attention.
            decoder_input_ids: `(batch, length)` decoder inputs. Built from `labels` when omitted; without either the
                decoder does not run (contrastive losses only).
            labels: `(batch, length)` target ids ending in [SEP], -100 where no loss is wanted.
            text_input_ids, text_attention_mask: the target sentences for the text encoder (CLIP loss).
            sentence_ids: `(batch,)` sentence of each clip; clips sharing one are SupCon positives (two augmented
                views of a clip share its id).
            gloss_labels: `(batch, length)` the target's glosses as ids into `config.gloss_vocabulary` plus one (0 is
                the CTC blank), padded with -100 (`make_gloss_labels`). Needs the CTC head (a gloss vocabulary).
            encoder_outputs: frame states from `get_encoder()`, to skip the encoder (as `generate` does).
            cache: an `EncoderDecoderCache` to extend; one is created when `use_cache` is set.
            use_cache: return the decoder's keys/values for incremental decoding.
        """
        if encoder_outputs is None:
            encoder_outputs = self.encoder(keypoints, frame_features, frame_mask)
        frame_states = encoder_outputs[0]
        visual_embeds = self._embed_frames(frame_states, frame_mask)

        if decoder_input_ids is None and labels is not None:
            decoder_input_ids = shift_tokens_right(
                labels, self.config.pad_token_id, self.config.decoder_start_token_id
            )
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        if cache is not None and not isinstance(cache, EncoderDecoderCache):
            raise TypeError(f"cache must be an EncoderDecoderCache, got {type(cache).__name__}.")
        logits = None
        if decoder_input_ids is not None:
            decoder_states = self.decoder(decoder_input_ids, frame_states, frame_mask, cache)
            logits = self.lm_head(decoder_states)

        text_embeds = None
        if text_input_ids is not None:
            if text_input_ids.shape[0] != visual_embeds.shape[0]:
                raise ValueError(
                    f"Got {visual_embeds.shape[0]} clips but {text_input_ids.shape[0]} sentences; the CLIP loss pairs "
                    "row i with row i, so pass one target sentence per clip."
                )
            text_embeds = self.get_text_features(text_input_ids, text_attention_mask)

        losses = {}
        if logits is not None and labels is not None:
            losses["generation"] = nn.functional.cross_entropy(
                logits.flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=self.config.label_smoothing
            )
        if gloss_labels is not None:
            if self.ctc_head is None:
                raise ValueError("gloss_labels need the CTC head: build the config with a gloss_vocabulary.")
            losses["ctc"] = ctc_loss(self.ctc_head(frame_states), frame_mask, gloss_labels)
        if text_embeds is not None:
            log_scale = visual_embeds.new_tensor(-math.log(self.config.contrastive_temperature))
            # clips of one sentence (and two views of one clip) all match each copy of that sentence
            losses["clip"] = clip_loss(visual_embeds, text_embeds, log_scale, group_ids=sentence_ids)[0]
        if sentence_ids is not None:
            memory = self.memory if self.training else None
            losses["supcon"] = supervised_contrastive_loss(
                visual_embeds, sentence_ids, self.config.contrastive_temperature, memory=memory
            )
            if memory is not None:
                memory.push(visual_embeds, sentence_ids)
        weights = {
            "generation": self.config.generation_weight,
            "clip": self.config.clip_weight,
            "supcon": self.config.supcon_weight,
            "ctc": self.config.ctc_weight,
        }
        # Every term is computed and returned (an ablation still logs what it no longer trains); a zero weight drops
        # the term from the sum rather than multiplying it, so a non-finite unused term cannot leak in.
        terms = [weights[name] * value for name, value in losses.items() if weights[name]]

        return Sign2TextOutput(
            loss=torch.stack(terms).sum() if terms else None,
            generation_loss=losses.get("generation"),
            clip_loss=losses.get("clip"),
            supcon_loss=losses.get("supcon"),
            ctc_loss=losses.get("ctc"),
            logits=logits,
            cache=cache,
            visual_embeds=visual_embeds,
            text_embeds=text_embeds,
            encoder_last_hidden_state=frame_states,
        )


__all__ = ["Sign2TextModel", "Sign2TextOutput", "Sign2TextPreTrainedModel", "ctc_loss", "make_gloss_labels"]
