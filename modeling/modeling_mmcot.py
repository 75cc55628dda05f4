"""Multimodal-CoT T5: vision fused into a stock transformers T5 by one-head cross-attention and a sigmoid gate.

The T5 stays whole (`T5ForConditionalGeneration`, its own weights, caches and loss); the fusion sits between its
encoder and decoder. `get_encoder()` returns the fused encoder, whose `forward` takes the vision inputs, so
`generate()` hands them over, runs text encoder, vision tower and fusion once, and decodes every beam from the
fused states with the T5's key/value cache. One model writes both stages (rationale, then answer); the prompt says
which, and `solve` runs the two in a row.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, GenerationMixin, PreTrainedModel, T5ForConditionalGeneration
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from configuration.configuration_mmcot import MMCoTConfig
from processing.pipeline_mmcot import MMCoTPipeline
from .modeling_freezing import FreezeAfterLoadingMixin


@dataclass
class MMCoTEncoderOutput(BaseModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch, text_length, d_model)`):
        The fused states `(1 − λ)·h + λ·h_attn` the decoder cross-attends to.
    text_hidden_state (`torch.FloatTensor` of shape `(batch, text_length, d_model)`):
        `h`, the T5 encoder's output before fusion.
    gate (`torch.FloatTensor` of shape `(batch, text_length, d_model)`):
        `λ`, the share of each coordinate taken from the vision side.
    """

    text_hidden_state: torch.FloatTensor | None = None
    gate: torch.FloatTensor | None = None


@dataclass
class MMCoTOutput(Seq2SeqLMOutput):
    r"""
    The T5's `Seq2SeqLMOutput` (`loss` is the token cross-entropy against `labels`, -100 ignored; the encoder fields
    hold the fused states), plus:

    gate (`torch.FloatTensor` of shape `(batch, text_length, d_model)`):
        The fusion gate `λ` (see `MMCoTEncoderOutput`).
    """

    gate: torch.FloatTensor | None = None


class MMCoTGatedFusion(nn.Module):
    r"""
    The Multimodal-CoT fusion: vision tokens `v` → `Linear(d_v, d)`; one-head attention with the text states `h` as
    queries and the projected vision tokens as keys and values → `h_attn`; gate `λ = sigmoid(W_l h + W_v h_attn + b)`
    (one `Linear(2d, d)` over `[h; h_attn]`, i.e. `W = [W_l W_v]`); output `(1 − λ)·h + λ·h_attn`.

    Vision tokens outside `vision_mask` are hidden from the attention. A problem with none left (no image) attends
    to nothing, and the empty sum is zero: `h_attn = 0` and the output is `(1 − λ)·h`.
    """

    def __init__(self, hidden_size: int, vision_hidden_size: int):
        super().__init__()
        self.vision_projection = nn.Linear(vision_hidden_size, hidden_size)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads=1, batch_first=True)
        self.gate = nn.Linear(2 * hidden_size, hidden_size)

    def forward(
        self,
        text_states: torch.Tensor,
        vision_states: torch.Tensor | None = None,
        vision_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            text_states: `(batch, text_length, d)`, the T5 encoder output `h`.
            vision_states: `(batch, tokens, d_v)`; `None` when no problem of the batch has an image.
            vision_mask: `(batch, tokens)`, true for vision tokens to attend to; all of them when omitted.

        Returns:
            The fused states and the gate `λ`, both `(batch, text_length, d)`.
        """
        if vision_states is None:
            attended = torch.zeros_like(text_states)
        else:
            vision_tokens = self.vision_projection(vision_states)
            if vision_mask is None:
                vision_mask = torch.ones(vision_tokens.shape[:2], dtype=torch.bool, device=vision_tokens.device)
            vision_mask = vision_mask.bool()
            has_keys = vision_mask.any(dim=1)
            # A softmax over no key is NaN, and its gradient would spread NaN through the batch: rows without a key
            # attend to all tokens for the call and are zeroed afterwards.
            key_padding_mask = ~(vision_mask | ~has_keys[:, None])
            attended, _ = self.attention(
                text_states, vision_tokens, vision_tokens, key_padding_mask=key_padding_mask, need_weights=False
            )
            attended = attended * has_keys[:, None, None].to(attended.dtype)
        gate = torch.sigmoid(self.gate(torch.cat([text_states, attended], dim=-1)))
        return (1 - gate) * text_states + gate * attended, gate


class MMCoTEncoder(nn.Module):
    """What `generate()` runs once per call: the T5 encoder, the vision tower or features, and the fusion.

    A view on the model, not an owner: the modules it runs are registered in `MMCoTForConditionalGeneration`, so
    they are saved, moved and adapted once. `generate` passes every keyword this `forward` names.
    """

    main_input_name = "input_ids"

    def __init__(self, model: "MMCoTForConditionalGeneration"):
        super().__init__()
        # Kept out of nn.Module's registry: registering the parent inside its own child would make the tree a cycle.
        self.__dict__["model"] = model

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        image_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool = True,
    ) -> MMCoTEncoderOutput:
        return self.model.encode(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            vision_features=vision_features,
            image_mask=image_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )


class MMCoTPreTrainedModel(PreTrainedModel):
    """The T5 and the vision tower initialise themselves (transformers dispatches each sub-model's own
    `_init_weights`); the fusion's Linear and MultiheadAttention layers get the default rules."""

    config_class = MMCoTConfig
    base_model_prefix = "mmcot"
    main_input_name = "input_ids"


class MMCoTForConditionalGeneration(FreezeAfterLoadingMixin, MMCoTPreTrainedModel, GenerationMixin):
    r"""
    `language_model` is a stock `T5ForConditionalGeneration`; `vision_tower` (optional) turns pixels into patch
    states; `fusion` is [`MMCoTGatedFusion`]. Vision enters three ways: `vision_features` precomputed per problem
    (no tower), or `pixel_values` through a tower that is either pretrained and frozen or built from a config and
    trained with the model. `image_mask` marks the problems that have an image; the others attend to nothing.
    """

    hub_auto_classes = ("AutoModelForSeq2SeqLM",)  # `hub.save_for_hub` registers these besides AutoModel
    hub_pipelines = {"multimodal-chain-of-thought": MMCoTPipeline}  # `transformers.pipeline` tasks it registers

    def __init__(self, config: MMCoTConfig):
        super().__init__(config)
        self.language_model = T5ForConditionalGeneration(config.text_config)
        self.vision_tower = AutoModel.from_config(config.vision_config) if config.vision_config is not None else None
        self.fusion = MMCoTGatedFusion(config.text_config.d_model, config.vision_hidden_size)
        self.post_init()
        self._apply_freezing()

    def _apply_freezing(self) -> None:
        if self.config.freeze_vision_tower and self.vision_tower is not None:
            self.vision_tower.requires_grad_(False)
            self.vision_tower.eval()

    def train(self, mode: bool = True) -> "MMCoTForConditionalGeneration":
        """A frozen vision tower stays in eval mode: its features are fixed inputs, not dropout-noised ones."""
        super().train(mode)
        if self.config.freeze_vision_tower and self.vision_tower is not None:
            self.vision_tower.eval()
        return self

    @classmethod
    def from_pretrained_backbones(
        cls,
        text_model_name_or_path: str | None = None,
        vision_model_name_or_path: str | None = None,
        **config_kwargs,
    ) -> "MMCoTForConditionalGeneration":
        """A fresh model around pretrained parts (Hub ids or local folders): the T5 (e.g. `google/flan-t5-base`)
        and/or a vision backbone (a full CLIP/SigLIP checkpoint gives its vision tower). The fusion starts from its
        initialisation. `config_kwargs` go to `MMCoTConfig` (e.g. `freeze_vision_tower=True`); a part not named
        comes from `config_kwargs` or the defaults."""
        if text_model_name_or_path is not None:
            config_kwargs["text_config"] = AutoConfig.from_pretrained(text_model_name_or_path)
        if vision_model_name_or_path is not None:
            vision_config = AutoConfig.from_pretrained(vision_model_name_or_path)
            config_kwargs["vision_config"] = getattr(vision_config, "vision_config", vision_config)
        model = cls(MMCoTConfig(**config_kwargs))
        if text_model_name_or_path is not None:
            pretrained = T5ForConditionalGeneration.from_pretrained(text_model_name_or_path)
            model.language_model.load_state_dict(pretrained.state_dict())
        if vision_model_name_or_path is not None:
            pretrained = type(model.vision_tower).from_pretrained(vision_model_name_or_path)
            model.vision_tower.load_state_dict(pretrained.state_dict())
        return model

    def get_encoder(self, modality: str | None = None) -> MMCoTEncoder:
        return MMCoTEncoder(self)

    def get_decoder(self) -> nn.Module:
        return self.language_model.decoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.language_model.set_input_embeddings(value)

    def get_vision_states(
        self,
        pixel_values: torch.FloatTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """
        Vision tokens `(batch, tokens, d_v)` and their mask `(batch, tokens)`, or `(None, None)` when the batch has
        no image. The tower runs only on the problems that have one; the others get zero tokens, all masked.
        """
        if self.vision_tower is None and pixel_values is not None:
            raise ValueError(
                "This model has no vision tower (config.vision_config is None): pass precomputed `vision_features` "
                f"of width {self.config.vision_feature_dim}, not pixel_values."
            )
        if self.vision_tower is not None and vision_features is not None:
            raise ValueError("This model reads images through its vision tower: pass pixel_values, not vision_features.")
        source = pixel_values if pixel_values is not None else vision_features
        if source is None:
            return None, None
        batch_size = source.shape[0]
        if image_mask is None:
            image_mask = torch.ones(batch_size, dtype=torch.bool, device=source.device)
        image_mask = image_mask.bool()
        if image_mask.shape != (batch_size,):
            raise ValueError(
                f"image_mask must have shape (batch,) = ({batch_size},), one flag per problem, got "
                f"{tuple(image_mask.shape)}."
            )
        if not image_mask.any():
            return None, None

        if vision_features is not None:
            if vision_features.ndim != 3 or vision_features.shape[-1] != self.config.vision_feature_dim:
                raise ValueError(
                    f"vision_features must have shape (batch, tokens, {self.config.vision_feature_dim}), got "
                    f"{tuple(vision_features.shape)}; config.vision_feature_dim says how wide the features are."
                )
            states = vision_features.to(self.fusion.vision_projection.weight.dtype)
        else:
            rows = image_mask.nonzero().flatten()
            tower_dtype = next(self.vision_tower.parameters()).dtype
            image_states = self.vision_tower(pixel_values=pixel_values[rows].to(tower_dtype)).last_hidden_state
            states = image_states.new_zeros(batch_size, *image_states.shape[1:]).index_copy(0, rows, image_states)
        return states, image_mask[:, None].expand(-1, states.shape[1])

    def encode(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        image_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> MMCoTEncoderOutput:
        """T5 encoder → `h`; vision → `v`; fusion → the states the decoder reads."""
        text = self.language_model.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        vision_states, vision_mask = self.get_vision_states(pixel_values, vision_features, image_mask)
        fused, gate = self.fusion(text.last_hidden_state, vision_states, vision_mask)
        return MMCoTEncoderOutput(
            last_hidden_state=fused,
            hidden_states=text.hidden_states,
            attentions=text.attentions,
            text_hidden_state=text.last_hidden_state,
            gate=gate,
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        image_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        encoder_outputs: MMCoTEncoderOutput | tuple | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MMCoTOutput:
        r"""
        Args:
            input_ids, attention_mask: `(batch, text_length)` the prompt (see `MMCoTProcessor`).
            pixel_values: `(batch, 3, height, width)` images for the vision tower; rows without an image are ignored.
            vision_features: `(batch, tokens, vision_feature_dim)` precomputed features (model without a tower).
            image_mask: `(batch,)`, 1 where the problem has an image; all ones when omitted.
            decoder_input_ids: built from `labels` (shifted right) when omitted.
            labels: `(batch, target_length)` target ids ending in `</s>`, -100 on padding.
            encoder_outputs: fused states from `get_encoder()`, to skip encoding (as `generate` does); the vision
                inputs are then not read.
            cache, use_cache: the T5 decoder's key/value cache (`generate` passes and fills it).
        """
        if encoder_outputs is None:
            encoder_outputs = self.encode(
                input_ids=input_ids,
                attention_mask=attention_mask,
                pixel_values=pixel_values,
                vision_features=vision_features,
                image_mask=image_mask,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )
        outputs = self.language_model(
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return MMCoTOutput(**outputs, gate=getattr(encoder_outputs, "gate", None))

    @torch.no_grad()
    def solve(self, processor, problems: dict | list[dict], *, rationales: list[str] | None = None, direct: bool = False, **generate_kwargs):
        """
        Answer ScienceQA-style problems: stage 1 writes a rationale from question, context, options and image; stage
        2 reads them with the rationale appended and writes "The answer is <option>.", which is parsed into an option.

        Args:
            processor: the model's `MMCoTProcessor`.
            problems: a problem or a list of them: dicts with `question`, `choices` (list of option texts), optional
                `hint` (the context), and `image` (PIL image, for a model with a vision tower) or `vision_features`
                (`(tokens, vision_feature_dim)` array); a missing or `None` image means none.
            rationales: skip stage 1 and answer from these (e.g. the gold ones, for an upper bound).
            direct: answer without a rationale (the QCM → A prompt).
            generate_kwargs: passed to both `generate` calls (e.g. `num_beams=4`).

        Returns:
            An `MMCoTPrediction` per problem (one, not a list, for a single problem): `rationale`, `answer_text`,
            `choice_index`, `letter`, `choice` (the last three `None` when the answer could not be parsed).
        """
        single = isinstance(problems, dict)
        problems = [problems] if single else list(problems)
        if direct and rationales is not None:
            raise ValueError("direct=True answers without a rationale; do not pass rationales with it.")
        if rationales is None and not direct:
            inputs = processor(problems, stage="rationale").to(self.device)
            generated = self.generate(**inputs, max_new_tokens=self.config.max_rationale_tokens, **generate_kwargs)
            rationales = processor.batch_decode(generated)
        stage = "direct" if direct else "answer"
        inputs = processor(problems, stage=stage, rationales=rationales).to(self.device)
        generated = self.generate(**inputs, max_new_tokens=self.config.max_answer_tokens, **generate_kwargs)
        predictions = processor.decode_answers(processor.batch_decode(generated), problems, rationales)
        return predictions[0] if single else predictions


__all__ = [
    "MMCoTEncoder",
    "MMCoTEncoderOutput",
    "MMCoTForConditionalGeneration",
    "MMCoTGatedFusion",
    "MMCoTOutput",
    "MMCoTPreTrainedModel",
]
