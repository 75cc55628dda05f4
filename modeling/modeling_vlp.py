"""VLP dual encoder: contrastive vision–language pretraining with a Matryoshka embedding.

The visual side is an image backbone, a pose/feature sequence tower, or both (their tokens are concatenated);
an attention-pooling head or a Perceiver resampler turns the tokens into one vector. The text side is a
BERT-family encoder. Both are projected into a shared embedding whose nested prefixes are each trained with a
symmetric contrastive loss.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from configuration.configuration_sequence import SequenceEncoderConfig
from configuration.configuration_vlp import VLPConfig
from processing.pipeline_vlp import VLPZeroShotImagePipeline, VLPZeroShotSignPipeline
from .modeling_contrastive import clip_loss, gather_with_grad, siglip_loss
from .modeling_freezing import FreezeAfterLoadingMixin
from .modeling_heads import MatryoshkaProjection, matryoshka_prefixes
from .modeling_pooling import build_pooling_head, init_pooling_weights, masked_mean
from .modeling_sequence import SequenceEncoder


@dataclass
class VLPOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `return_loss` is true):
        Contrastive loss averaged over the Matryoshka dimensions with `config.matryoshka_weights`.
    matryoshka_losses (`torch.FloatTensor` of shape `(len(config.matryoshka_dims),)`, *optional*, with `loss`):
        The loss at each Matryoshka dimension, largest first.
    logits_per_visual (`torch.FloatTensor` of shape `(visual_batch, text_batch)`):
        Scaled similarities at the full dimension (plus the bias for SigLIP). With `return_loss` under data
        parallelism the columns cover the texts of all ranks (what the loss scores); otherwise only the local ones.
    logits_per_text (`torch.FloatTensor` of shape `(text_batch, visual_batch)`):
        The same seen from the texts.
    visual_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`):
        L2-normalised visual embeddings.
    text_embeds (`torch.FloatTensor` of shape `(batch, projection_dim)`):
        L2-normalised text embeddings.
    """

    loss: torch.FloatTensor | None = None
    matryoshka_losses: torch.FloatTensor | None = None
    logits_per_visual: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    visual_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None


class VLPPreTrainedModel(PreTrainedModel):
    config_class = VLPConfig
    base_model_prefix = "vlp"
    main_input_name = "input_ids"

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        init_pooling_weights(module)
        if isinstance(module, VLPModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            init.constant_(module.logit_bias, self.config.logit_bias_init_value)


class VLPModel(FreezeAfterLoadingMixin, VLPPreTrainedModel):
    def __init__(self, config: VLPConfig):
        super().__init__(config)
        pooling_hidden = config.pooling_hidden_size
        self.vision_model = AutoModel.from_config(config.vision_config) if config.vision_config else None
        self.vision_token_projection = (
            nn.Linear(config.vision_config.hidden_size, pooling_hidden) if config.vision_config else None
        )
        self.sequence_encoder = SequenceEncoder(config.sequence_config) if config.sequence_config else None
        self.sequence_token_projection = (
            nn.Linear(config.sequence_config.hidden_size, pooling_hidden) if config.sequence_config else None
        )
        self.pooling = build_pooling_head(
            config.pooling_type, pooling_hidden, config.num_pooling_heads, config.num_latents, config.perceiver_depth
        )
        self.visual_projection = MatryoshkaProjection(pooling_hidden, config.matryoshka_dims)
        self.text_model = AutoModel.from_config(config.text_config)
        self.text_projection = MatryoshkaProjection(config.text_config.hidden_size, config.matryoshka_dims)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.logit_bias = nn.Parameter(torch.tensor(config.logit_bias_init_value))
        self.post_init()
        self._apply_freezing()

    @property
    def hub_pipelines(self) -> dict[str, type]:
        """The `transformers.pipeline` tasks `hub.save_for_hub` registers: one per visual tower this model has."""
        pipelines = {}
        if self.config.vision_config is not None:
            pipelines["zero-shot-image-classification"] = VLPZeroShotImagePipeline
        if self.config.sequence_config is not None:
            pipelines["zero-shot-sign-classification"] = VLPZeroShotSignPipeline
        return pipelines

    def _apply_freezing(self) -> None:
        if self.config.freeze_vision_tower and self.vision_model is not None:
            self.vision_model.requires_grad_(False)
        if self.config.freeze_text_tower:
            self.text_model.requires_grad_(False)
        self.logit_bias.requires_grad_(self.config.loss_type == "siglip")  # the CLIP loss has no bias

    @classmethod
    def from_backbones(
        cls,
        text_model_name_or_path: str,
        vision_model_name_or_path: str | None = None,
        sequence_config: SequenceEncoderConfig | dict | None = None,
        **config_kwargs,
    ) -> "VLPModel":
        """Build a fresh dual encoder around pretrained backbones (Hub ids or local folders).

        `vision_model_name_or_path` may point at a full CLIP/SigLIP checkpoint; its vision tower is used.
        """
        vision_config = None
        if vision_model_name_or_path is not None:
            vision_config = AutoConfig.from_pretrained(vision_model_name_or_path)
            vision_config = getattr(vision_config, "vision_config", vision_config)
        text_config = AutoConfig.from_pretrained(text_model_name_or_path)
        config = VLPConfig(
            vision_config=vision_config, sequence_config=sequence_config, text_config=text_config, **config_kwargs
        )
        model = cls(config)
        model.text_model.load_state_dict(type(model.text_model).from_pretrained(text_model_name_or_path).state_dict())
        if vision_model_name_or_path is not None:
            pretrained = type(model.vision_model).from_pretrained(vision_model_name_or_path)
            model.vision_model.load_state_dict(pretrained.state_dict())
        return model

    def get_visual_features(
        self,
        pixel_values: torch.Tensor | None = None,
        keypoints: torch.Tensor | None = None,
        frame_features: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unnormalised visual embeddings `(batch, projection_dim)` from images and/or sign sequences."""
        tokens, masks = [], []
        if pixel_values is not None:
            if self.vision_model is None:
                raise ValueError("This model has no image tower (config.vision_config is None); pass keypoints.")
            image_tokens = self.vision_model(pixel_values=pixel_values).last_hidden_state
            tokens.append(self.vision_token_projection(image_tokens))
            masks.append(image_tokens.new_ones(image_tokens.shape[:2], dtype=torch.bool))
        if keypoints is not None or frame_features is not None:
            if self.sequence_encoder is None:
                raise ValueError("This model has no sequence tower (config.sequence_config is None); pass pixel_values.")
            frame_states = self.sequence_encoder(keypoints, frame_features, frame_mask)
            tokens.append(self.sequence_token_projection(frame_states))
            masks.append(
                frame_states.new_ones(frame_states.shape[:2], dtype=torch.bool)
                if frame_mask is None
                else frame_mask.bool()
            )
        if not tokens:
            raise ValueError("get_visual_features needs pixel_values, keypoints or frame_features.")
        if len({t.shape[0] for t in tokens}) > 1:
            raise ValueError(f"Images and sequences have different batch sizes: {[t.shape[0] for t in tokens]}.")
        pooled = self.pooling(torch.cat(tokens, dim=1), torch.cat(masks, dim=1))
        return self.visual_projection(pooled)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised text embeddings `(batch, projection_dim)`."""
        hidden_states = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = hidden_states[:, 0] if self.config.text_pooling == "cls" else masked_mean(hidden_states, attention_mask)
        return self.text_projection(pooled)

    def contrastive_loss(
        self, visual_features: torch.Tensor, text_features: torch.Tensor, sentence_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Matryoshka contrastive loss on unnormalised features; rows with the same `sentence_ids` entry share one
        text, so they are positives of each other rather than negatives.

        Under data parallelism the features and ids of all ranks are gathered once (with gradient) and every
        Matryoshka dimension slices and re-normalises those columns: one collective per input, not one per dimension.

        Returns `(loss, per-dimension losses, logits_per_visual, logits_per_text)`, logits at the full dimension.
        Kept separate from `forward` so that feature-caching accumulation can call it on a cached batch.
        """
        if visual_features.shape[0] != text_features.shape[0]:
            raise ValueError(
                f"Got {visual_features.shape[0]} visual inputs but {text_features.shape[0]} texts; the contrastive "
                "loss pairs row i with row i, so pass one caption per visual input."
            )
        dims, weights = self.config.matryoshka_dims, self.config.matryoshka_weights
        all_visual_features, all_text_features = gather_with_grad(visual_features), gather_with_grad(text_features)
        all_sentence_ids = None if sentence_ids is None else gather_with_grad(sentence_ids)
        visual, text = matryoshka_prefixes(visual_features, dims), matryoshka_prefixes(text_features, dims)
        all_visual = matryoshka_prefixes(all_visual_features, dims)
        all_text = matryoshka_prefixes(all_text_features, dims)
        losses, full_logits = [], None
        for dim in dims:
            columns = dict(
                all_visual_embeds=all_visual[dim], all_text_embeds=all_text[dim], all_group_ids=all_sentence_ids
            )
            if self.config.loss_type == "clip":
                loss, *logits = clip_loss(visual[dim], text[dim], self.logit_scale, sentence_ids, **columns)
            else:
                loss, *logits = siglip_loss(
                    visual[dim], text[dim], self.logit_scale, self.logit_bias, sentence_ids, **columns
                )
            losses.append(loss)
            full_logits = full_logits or logits  # dims are sorted largest first
        losses = torch.stack(losses)
        weights = losses.new_tensor(weights)
        return (losses * weights).sum() / weights.sum(), losses, *full_logits

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep the log temperature in [0, ln 100] (call after each optimiser step, as CLIP does)."""
        self.logit_scale.clamp_(0, self.config.logit_scale_max)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        keypoints: torch.Tensor | None = None,
        frame_features: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        sentence_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> VLPOutput:
        r"""
        Args:
            input_ids, attention_mask: tokenised captions.
            pixel_values: `(batch, 3, height, width)` images, for a model with an image tower.
            keypoints: `(batch, frames, num_keypoints, keypoint_dim)` pose sequences, for a sequence tower.
            frame_features: `(batch, frames, feature_dim)` per-frame visual features, for a sequence tower.
            frame_mask: `(batch, frames)`, 1 for real frames.
            sentence_ids: `(batch,)` ids of the captions' texts, used by the loss; rows with equal ids (two clips of
                one sentence, two images captioned alike) count as matches, not negatives. Ids must be the same on
                every rank.
            return_loss: compute the contrastive loss (one caption per visual input). Under data parallelism this
                gathers every rank's embeddings, so all ranks must call it together. Without it, as in
                `transformers.CLIPModel`, the logits score the local visual inputs against the local texts and no
                collective runs, so one rank may evaluate alone.
        """
        if input_ids is None:
            raise ValueError("forward needs input_ids (tokenised captions); use get_visual_features for one side.")
        visual_features = self.get_visual_features(pixel_values, keypoints, frame_features, frame_mask)
        text_features = self.get_text_features(input_ids, attention_mask)
        visual_embeds = nn.functional.normalize(visual_features, dim=-1)
        text_embeds = nn.functional.normalize(text_features, dim=-1)
        loss = matryoshka_losses = None
        if return_loss:
            loss, matryoshka_losses, logits_per_visual, logits_per_text = self.contrastive_loss(
                visual_features, text_features, sentence_ids
            )
        else:
            logits_per_visual = self.logit_scale.exp() * visual_embeds @ text_embeds.T
            if self.config.loss_type == "siglip":
                logits_per_visual = logits_per_visual + self.logit_bias
            logits_per_text = logits_per_visual.T
        return VLPOutput(
            loss=loss,
            matryoshka_losses=matryoshka_losses,
            logits_per_visual=logits_per_visual,
            logits_per_text=logits_per_text,
            visual_embeds=visual_embeds,
            text_embeds=text_embeds,
        )


__all__ = ["VLPModel", "VLPOutput", "VLPPreTrainedModel"]
