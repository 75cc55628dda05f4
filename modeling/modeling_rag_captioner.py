"""RAG captioner: a frozen dual encoder (the project's VLP model or a CLIP checkpoint) retrieves captions of similar
images from a faiss datastore, and a causal language model with cross-attention writes the caption from the image and
the retrieved captions.

The dual encoder serves twice, frozen: its text tower embeds the datastore, its image tower embeds the query image for
the search and gives the token states the decoder cross-attends to. Two fusions:

- `"concat"`: the retrieved captions' embeddings are projected, scaled by a learnable factor and appended to the
  projected image states; the decoder cross-attends to both. A cosine penalty keeps the two projections in one space.
- `"prompt"` (SmallCap): the retrieved captions are written into a prompt the decoder reads before the caption.

`model.retriever` (the faiss index and caption datastore) is saved into the model folder by `save_pretrained` and
loaded back by `from_pretrained`, so a folder or Hub repository is self-contained; `generate(pixel_values=...)`
searches it itself.
"""

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

from configuration.configuration_rag_captioner import RagCaptionerConfig, load_retriever_config
from processing.pipeline_rag_captioner import RagCaptioningPipeline
from processing.processing_rag_captioner import decoder_special_ids, encode_decoder_inputs
from .modeling_freezing import FreezeAfterLoadingMixin
from .modeling_heads import ProjectionHead
from .modeling_pooling import masked_mean
from .modeling_retriever import HUB_KWARGS, CaptionRetriever, RetrievedCaptions
from .modeling_vlp import VLPModel

@dataclass
class RagCaptionerOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        `lm_loss + retriever_lambda * alignment_loss`, when `labels` are given.
    lm_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Token cross-entropy of the caption (positions labelled -100, such as the prompt, are ignored).
    alignment_loss (`torch.FloatTensor` of shape `()`, *optional*):
        `"concat"`: mean over samples with retrieved captions of `1 - cos(mean image projection, mean retrieval
        projection)`; 0 when no sample has any.
    logits (`torch.FloatTensor` of shape `(batch, length, vocab_size)`):
        Next-token scores of the decoder. With `labels`, only from the position before the first caption token on
        (`length` = the caption width + 1): the loss needs no scores over the prompt.
    cache (`Cache`, *optional*):
        The decoder's self- and cross-attention keys/values, when caching.
    """

    loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None


def retriever_lambda_schedule(step: int, total_steps: int, peak: float, warmup_ratio: float = 0.1) -> float:
    """The weight of the alignment penalty at `step`: linear warm-up from 0 to `peak` over the first
    `warmup_ratio` of training, then cosine decay to 0 at `total_steps`. Pass it to `forward(retriever_lambda=...)`."""
    if total_steps < 1 or not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"Need total_steps >= 1 and warmup_ratio in [0, 1), got {total_steps}, {warmup_ratio}.")
    warmup_steps = warmup_ratio * total_steps
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(total_steps - warmup_steps, 1e-9))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def _projection(in_features: int, hidden_features: int, out_features: int) -> nn.Module:
    """One linear map, or Linear→ReLU→Linear with a hidden width."""
    return ProjectionHead(in_features, hidden_features, out_features) if hidden_features else nn.Linear(in_features, out_features)


def decoder_layer_stack(decoder: nn.Module) -> nn.ModuleList:
    """The decoder's repeated blocks (`transformer.h` in GPT-2, `bert.encoder.layer` in BERT): its longest list of
    modules of one class."""
    stacks = [
        child
        for child in decoder.modules()
        if isinstance(child, nn.ModuleList) and len(child) > 0 and len({type(layer) for layer in child}) == 1
    ]
    if not stacks:
        raise ValueError(f"{type(decoder).__name__} has no list of identical layers to freeze.")
    return max(stacks, key=len)


class RagCaptionerPreTrainedModel(PreTrainedModel):
    config_class = RagCaptionerConfig
    base_model_prefix = "rag_captioner"
    main_input_name = "input_ids"

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, RagCaptionerModel) and module.retrieval_scale is not None:
            init.constant_(module.retrieval_scale, self.config.retrieval_scale_init)


class RagCaptionerModel(FreezeAfterLoadingMixin, RagCaptionerPreTrainedModel, GenerationMixin):
    """
    Attributes beyond the modules:
        retriever ([`CaptionRetriever`]): the faiss index and caption datastore (empty until `retriever.build`).
        retriever_tokenizer: the VLP text tower's tokenizer, used to embed captions (`build`, `add`, oracle inputs).
        decoder_tokenizer: the decoder's tokenizer, used by the `"prompt"` fusion to write retrieved captions into
            its prompt during `generate`.
    Both tokenizers are set with `set_tokenizers` (or by `from_dual_encoder`) and saved in sub-folders of the model
    folder.
    """

    # `hub.save_for_hub` registers these besides AutoModel: transformers files its own captioners (BLIP, GIT) there.
    hub_auto_classes = ("AutoModelForImageTextToText",)
    hub_pipelines = {"image-text-to-text": RagCaptioningPipeline}  # `transformers.pipeline` tasks it registers

    def __init__(self, config: RagCaptionerConfig):
        super().__init__(config)
        retriever_config = config.retriever_config
        self.vlp = (CLIPModel if isinstance(retriever_config, CLIPConfig) else VLPModel)(retriever_config)
        self.decoder = AutoModelForCausalLM.from_config(config.decoder_config)
        width = config.decoder_config.hidden_size
        vision_width = config.retriever_config.vision_config.hidden_size
        self.image_projection = _projection(vision_width, config.image_projection_dim, width)
        if config.fusion == "concat":
            embedding_dim = config.retriever_config.projection_dim
            self.retrieval_projection = _projection(embedding_dim, config.retrieval_projection_dim, width)
            self.retrieval_scale = nn.Parameter(torch.tensor(config.retrieval_scale_init))
        else:
            self.retrieval_projection, self.retrieval_scale = None, None
        self.post_init()
        self._apply_freezing()
        self.retriever = CaptionRetriever.from_config(config, embed_texts=self.embed_captions)
        self.retriever_tokenizer = None
        self.decoder_tokenizer = None
        decoder_config = config.decoder_config
        self.generation_config.bos_token_id = decoder_config.bos_token_id
        self.generation_config.eos_token_id = decoder_config.eos_token_id
        self.generation_config.pad_token_id = decoder_config.pad_token_id
        self.generation_config.max_new_tokens = config.max_caption_tokens + 1

    def _apply_freezing(self) -> None:
        self.vlp.requires_grad_(False)
        self.vlp.eval()
        for layer in decoder_layer_stack(self.decoder)[: self.config.num_frozen_decoder_layers]:
            layer.requires_grad_(False)

    def train(self, mode: bool = True) -> "RagCaptionerModel":
        """The frozen VLP model stays in eval mode: the index holds its dropout-free embeddings."""
        super().train(mode)
        self.vlp.eval()
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.decoder.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.decoder.get_output_embeddings()

    # ------------------------------------------------------------------------------------------------ construction

    @classmethod
    def from_dual_encoder(
        cls,
        retriever_model_name_or_path: str | os.PathLike,
        *,
        retriever_tokenizer=None,
        decoder_model_name_or_path: str | None = None,
        decoder_config=None,
        decoder_tokenizer=None,
        **config_kwargs,
    ) -> "RagCaptionerModel":
        """
        A new captioner around a trained dual encoder: a VLP folder written by `hub.save_for_hub`, or a transformers
        CLIP checkpoint (folder or Hub id, e.g. `openai/clip-vit-base-patch32`), as SmallCap retrieves with CLIP.

        Args:
            retriever_model_name_or_path: the dual encoder. Its folder's tokenizer becomes `retriever_tokenizer`
                unless one is given.
            decoder_model_name_or_path: warm-start the decoder from this causal LM (e.g. `gpt2`); cross-attention
                layers are added, newly initialised. Its tokenizer becomes `decoder_tokenizer` unless one is given.
            decoder_config: the decoder config for a decoder trained from scratch (default: the tiny GPT-2 of
                `RagCaptionerConfig`); ignored with `decoder_model_name_or_path`.
            decoder_tokenizer: defaults to the decoder checkpoint's, or to `retriever_tokenizer` for a decoder from
                scratch (the default config uses the same uncased WordPiece vocabulary).
            config_kwargs: further `RagCaptionerConfig` fields (fusion, num_retrieved, index_factory, ...).
        """
        retriever_config = load_retriever_config(retriever_model_name_or_path)
        retriever_class = CLIPModel if isinstance(retriever_config, CLIPConfig) else VLPModel
        vlp = retriever_class.from_pretrained(retriever_model_name_or_path, config=retriever_config)
        # The tokenizer is a transformers class named in tokenizer_config.json. An empty config keeps AutoTokenizer from
        # reading the folder's config, whose model type only the folder's remote code knows.
        retriever_tokenizer = retriever_tokenizer or AutoTokenizer.from_pretrained(
            retriever_model_name_or_path, config=PreTrainedConfig(), trust_remote_code=False
        )
        if decoder_model_name_or_path is not None:
            decoder_config = AutoConfig.from_pretrained(decoder_model_name_or_path)
            decoder_tokenizer = decoder_tokenizer or AutoTokenizer.from_pretrained(decoder_model_name_or_path)
        decoder_tokenizer = decoder_tokenizer or retriever_tokenizer
        if decoder_config is not None:
            decoder_config = copy.deepcopy(decoder_config)  # the caller's config stays as it was
            start, end, pad = decoder_special_ids(decoder_tokenizer)
            decoder_config.bos_token_id, decoder_config.eos_token_id, decoder_config.pad_token_id = start, end, pad
        config = RagCaptionerConfig(retriever_config=vlp.config, decoder_config=decoder_config, **config_kwargs)
        model = cls(config)
        model.vlp.load_state_dict(vlp.state_dict())
        if decoder_model_name_or_path is not None:
            model.decoder = AutoModelForCausalLM.from_pretrained(decoder_model_name_or_path, config=config.decoder_config)
        model._apply_freezing()
        model.set_tokenizers(retriever_tokenizer, decoder_tokenizer)
        return model

    def set_tokenizers(self, retriever_tokenizer=None, decoder_tokenizer=None) -> None:
        """Attach the tokenizers (see the class docstring), checking they fit the towers' vocabularies."""
        checks = (
            ("retriever_tokenizer", retriever_tokenizer, self.config.retriever_config.text_config),
            ("decoder_tokenizer", decoder_tokenizer, self.config.decoder_config),
        )
        for name, tokenizer, tower_config in checks:
            if tokenizer is None:
                continue
            if len(tokenizer) > tower_config.vocab_size:
                raise ValueError(
                    f"{name} has {len(tokenizer)} tokens but its tower's vocabulary has {tower_config.vocab_size}; "
                    "pass the tokenizer the tower was built for."
                )
            setattr(self, name, tokenizer)
        if decoder_tokenizer is not None:
            expected = (self.config.decoder_config.bos_token_id, self.config.decoder_config.eos_token_id)
            start, end, _ = decoder_special_ids(decoder_tokenizer)
            if (start, end) != expected:
                raise ValueError(
                    f"decoder_tokenizer starts/ends captions with ids {(start, end)} but the decoder config says "
                    f"bos/eos = {expected}."
                )

    # ------------------------------------------------------------------------------------------------ encoders

    def get_image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen image tower's token states `(batch, tokens, vision_hidden)`."""
        with torch.no_grad():
            return self.vlp.vision_model(pixel_values=pixel_values).last_hidden_state

    def get_image_embeddings(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings `(batch, projection_dim)` from `image_tokens`, reusing the tower's states
        instead of running it a second time: `VLPModel.get_visual_features` for images, or CLIP's
        `get_image_features` (the class token after the tower's final norm, projected)."""
        vlp = self.vlp
        with torch.no_grad():
            if isinstance(vlp, CLIPModel):
                pooled = vlp.vision_model.post_layernorm(image_tokens[:, 0])
            else:
                mask = image_tokens.new_ones(image_tokens.shape[:2], dtype=torch.bool)
                pooled = vlp.pooling(vlp.vision_token_projection(image_tokens), mask)
            return nn.functional.normalize(vlp.visual_projection(pooled), dim=-1)

    @torch.no_grad()
    def embed_captions(self, captions: list[str]) -> torch.Tensor:
        """Normalised text embeddings `(len(captions), projection_dim)` of the retriever, the vectors the datastore
        indexes."""
        if self.retriever_tokenizer is None:
            raise ValueError("No retriever_tokenizer; attach the VLP text tower's tokenizer with model.set_tokenizers.")
        text_config = self.config.retriever_config.text_config
        inputs = self.retriever_tokenizer(
            list(captions),
            padding=True,
            truncation=True,
            max_length=getattr(text_config, "max_position_embeddings", 512),
            return_token_type_ids=False,
            return_tensors="pt",
        ).to(self.device)
        features = self.vlp.get_text_features(inputs["input_ids"], inputs["attention_mask"])
        if isinstance(self.vlp, CLIPModel):  # transformers returns the projected embedding as the pooled output
            features = features.pooler_output
        return nn.functional.normalize(features, dim=-1)

    def retrieve(self, pixel_values: torch.Tensor, k: int | None = None, exclude=None) -> RetrievedCaptions:
        """Search the datastore for the k (default `config.num_retrieved`) captions nearest each image; `exclude`
        lists, per image, datastore ids never to return (its own captions, for training images)."""
        embeddings = self.get_image_embeddings(self.get_image_tokens(pixel_values))
        return self.retriever.search(embeddings, k or self.config.num_retrieved, exclude=exclude)

    def retrieval_embeddings(
        self, retrieved_ids=None, retrieved_captions: list[list[str]] | None = None
    ) -> dict[str, torch.Tensor]:
        """`"concat"` inputs `retrieved_embeds` `(batch, width, projection_dim)` and `retrieved_mask` `(batch, width)`
        from datastore ids (their stored vectors; -1 = none) or from caption strings (embedded by the text tower)."""
        if (retrieved_ids is None) == (retrieved_captions is None):
            raise ValueError("Pass exactly one of retrieved_ids and retrieved_captions.")
        if retrieved_ids is not None:
            vectors, mask = self.retriever.embeddings(retrieved_ids)
            embeds, mask = torch.from_numpy(vectors), torch.from_numpy(mask)
        else:
            sizes = [len(captions) for captions in retrieved_captions]
            flat = [caption for captions in retrieved_captions for caption in captions]
            dim = self.config.retriever_config.projection_dim
            embedded = self.embed_captions(flat).float().cpu() if flat else torch.zeros(0, dim)
            embeds = torch.zeros(len(sizes), max(sizes, default=0), dim)
            mask = torch.zeros(len(sizes), max(sizes, default=0), dtype=torch.bool)
            for row, chunk in enumerate(embedded.split(sizes)):
                embeds[row, : len(chunk)], mask[row, : len(chunk)] = chunk, True
        return {"retrieved_embeds": embeds.to(self.device, self.dtype), "retrieved_mask": mask.to(self.device)}

    def fuse(
        self,
        image_tokens: torch.Tensor,
        retrieved_embeds: torch.Tensor | None = None,
        retrieved_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The states the decoder cross-attends to, their mask, and the alignment penalty (`"concat"` with retrieved
        embeddings; otherwise `None`)."""
        image_states = self.image_projection(image_tokens)
        image_mask = image_tokens.new_ones(image_tokens.shape[:2], dtype=torch.long)
        if retrieved_embeds is None:
            return image_states, image_mask, None
        if self.config.fusion != "concat":
            raise ValueError(
                "retrieved_embeds feed the 'concat' fusion; the 'prompt' fusion reads retrieved captions as text "
                "(processor(..., retrieved_captions=...) for training, generate(retrieved_captions=...) for captions)."
            )
        if retrieved_embeds.ndim != 3 or retrieved_embeds.shape[0] != image_tokens.shape[0]:
            raise ValueError(
                f"retrieved_embeds must have shape (batch={image_tokens.shape[0]}, k, "
                f"{self.config.retriever_config.projection_dim}), got {tuple(retrieved_embeds.shape)}."
            )
        if retrieved_mask is None:
            retrieved_mask = retrieved_embeds.new_ones(retrieved_embeds.shape[:2], dtype=torch.bool)
        retrieval_states = self.retrieval_projection(retrieved_embeds)
        has_retrieval = retrieved_mask.bool().any(dim=1)
        alignment_loss = retrieval_states.new_zeros(())
        if has_retrieval.any():
            cosine = nn.functional.cosine_similarity(
                image_states.mean(1)[has_retrieval], masked_mean(retrieval_states, retrieved_mask)[has_retrieval], dim=-1
            )
            alignment_loss = (1.0 - cosine).mean()
        states = torch.cat([image_states, self.retrieval_scale * retrieval_states], dim=1)
        mask = torch.cat([image_mask, retrieved_mask.long()], dim=1)
        return states, mask, alignment_loss

    # ------------------------------------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        retrieved_embeds: torch.Tensor | None = None,
        retrieved_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        retriever_lambda: float | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> RagCaptionerOutput:
        r"""
        Args:
            input_ids, attention_mask, labels: decoder inputs from the processor (`labels` -100 outside the caption).
            pixel_values: `(batch, 3, height, width)` images.
            retrieved_embeds, retrieved_mask: `"concat"` only: VLP embeddings of the retrieved captions
                `(batch, k, projection_dim)` and which are present `(batch, k)`; see `retrieval_embeddings`. Without
                them the decoder sees the image alone. The `"prompt"` fusion gets its captions inside `input_ids`.
            encoder_hidden_states, encoder_attention_mask: already fused states (from `fuse`), instead of
                `pixel_values`; `generate` computes them once and passes them to every step.
            position_ids, cache, use_cache: as in any causal LM (`generate` fills them). Without `position_ids` they
                are counted from `attention_mask`, which skips the left padding of prompts.
            logits_to_keep: scores for the last N positions only (0: all); `generate` asks for 1. Ignored with
                `labels`, which set it to the caption's positions.
            retriever_lambda: weight of the alignment penalty for this step (`retriever_lambda_schedule`); defaults
                to `config.retriever_lambda`.
        """
        if input_ids is None:
            raise ValueError("forward needs input_ids (from the processor); use generate to write captions.")
        alignment_loss = None
        if encoder_hidden_states is None:
            if pixel_values is None:
                raise ValueError("Pass pixel_values (or fused encoder_hidden_states).")
            encoder_hidden_states, encoder_attention_mask, alignment_loss = self.fuse(
                self.get_image_tokens(pixel_values), retrieved_embeds, retrieved_mask
            )
        if position_ids is None and attention_mask is not None:
            # Prompts are left-padded: positions count real tokens only, as `generate` counts them.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        if labels is not None:
            labelled = (labels != -100).any(dim=0).nonzero()
            if len(labelled) == 0:
                raise ValueError("labels mark no token to predict (all -100).")
            # Next-token scores only from the position before the first caption token: the vocabulary projection
            # of the prompt would cost most of a "prompt" step and feeds no loss.
            logits_to_keep = labels.shape[1] - max(int(labelled[0]) - 1, 0)
        outputs = self.decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            cache=cache,
            **kwargs,
        )
        loss = lm_loss = None
        if labels is not None:
            targets = labels[:, labels.shape[1] - logits_to_keep + 1 :]
            lm_loss = nn.functional.cross_entropy(
                outputs.logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100
            )
            loss = lm_loss
            if alignment_loss is not None:
                loss = loss + (self.config.retriever_lambda if retriever_lambda is None else retriever_lambda) * alignment_loss
        return RagCaptionerOutput(
            loss=loss,
            lm_loss=lm_loss,
            alignment_loss=alignment_loss,
            logits=outputs.logits,
            cache=outputs.cache,
        )

    # ------------------------------------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        retrieved_captions: list[list[str]] | None = None,
        retrieved_ids=None,
        retrieved_embeds: torch.Tensor | None = None,
        retrieved_mask: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor | ModelOutput:
        """
        Caption images; returns the generated caption tokens only (no start token, no prompt).

        Retrieval, at most one of:
            nothing: search the datastore for `config.num_retrieved` captions per image (the inference path);
            retrieved_captions: one list of captions per image, `[]` for none (ablations: no retrieval, random or
                oracle captions);
            retrieved_ids: datastore ids per image (-1 = none);
            retrieved_embeds / retrieved_mask: `"concat"` inputs as in `forward`.

        Other keyword arguments go to `GenerationMixin.generate` (`num_beams`, `max_new_tokens`, `do_sample`, ...);
        the image tower runs once and the decoder's cross-attention keys/values are cached after the first step.
        """
        if pixel_values is None:
            raise ValueError("generate needs pixel_values (from the processor).")
        if "input_ids" in generate_kwargs:
            raise ValueError("generate writes its own decoder inputs; pass retrieved_captions instead of input_ids.")
        given = [name for name, value in (("retrieved_captions", retrieved_captions), ("retrieved_ids", retrieved_ids),
                 ("retrieved_embeds", retrieved_embeds)) if value is not None]
        if len(given) > 1:
            raise ValueError(f"Pass at most one of retrieved_captions, retrieved_ids, retrieved_embeds; got {given}.")
        batch_size = pixel_values.shape[0]
        image_tokens = self.get_image_tokens(pixel_values)
        if not given:
            retrieved_ids = self.retriever.search(self.get_image_embeddings(image_tokens), self.config.num_retrieved).ids
        for name, value in (("retrieved_captions", retrieved_captions), ("retrieved_ids", retrieved_ids)):
            if value is not None and len(value) != batch_size:
                raise ValueError(f"{name} has {len(value)} entries for {batch_size} images; give one per image.")

        if self.config.fusion == "prompt":
            if retrieved_embeds is not None:
                raise ValueError("The 'prompt' fusion reads captions, not embeddings: pass retrieved_captions.")
            if self.decoder_tokenizer is None:
                raise ValueError("No decoder_tokenizer to write the prompt with; attach it with model.set_tokenizers.")
            captions = retrieved_captions if retrieved_captions is not None else self.retriever.lookup(retrieved_ids)
            prompts = encode_decoder_inputs(self.decoder_tokenizer, None, captions, self.config.max_caption_tokens)
            input_ids = torch.tensor(prompts["input_ids"], device=self.device)
            attention_mask = torch.tensor(prompts["attention_mask"], device=self.device)
        else:
            if retrieved_embeds is None:
                retrieval = self.retrieval_embeddings(retrieved_ids=retrieved_ids, retrieved_captions=retrieved_captions)
                retrieved_embeds, retrieved_mask = retrieval["retrieved_embeds"], retrieval["retrieved_mask"]
            input_ids = torch.full((batch_size, 1), self.config.decoder_config.bos_token_id, device=self.device)
            attention_mask = torch.ones_like(input_ids)
        states, mask, _ = self.fuse(image_tokens, retrieved_embeds, retrieved_mask)
        outputs = super().generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=states,
            encoder_attention_mask=mask,
            **generate_kwargs,
        )
        if isinstance(outputs, torch.Tensor):
            return outputs[:, input_ids.shape[1] :]
        outputs.sequences = outputs.sequences[:, input_ids.shape[1] :]
        return outputs

    # ------------------------------------------------------------------------------------------------ save / load

    def save_pretrained(self, save_directory: str | os.PathLike, *args, push_to_hub: bool = False, **kwargs) -> None:
        """Weights and config, plus the index, datastore and tokenizers, all in `save_directory`."""
        if push_to_hub:
            raise ValueError(
                "transformers' push uploads only the files a save changes, which can leave an unchanged index behind; "
                "save the folder (hub.save_for_hub), then upload it in one commit with `hf-mm-push FOLDER REPO_ID`."
            )
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            config = self.config
            self.retriever.save(save_directory, config.index_file_name, config.datastore_file_name)
            for tokenizer, folder in (
                (self.retriever_tokenizer, config.retriever_tokenizer_folder),
                (self.decoder_tokenizer, config.decoder_tokenizer_folder),
            ):
                if tokenizer is not None:
                    tokenizer.save_pretrained(Path(save_directory) / folder)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then the retriever's index and datastore and the tokenizers from the
        same folder or Hub repository (same `revision`)."""
        hub_kwargs = {name: kwargs[name] for name in HUB_KWARGS if name in kwargs}
        loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.retriever = CaptionRetriever.from_pretrained(
            pretrained_model_name_or_path, model.config, embed_texts=model.embed_captions, **hub_kwargs
        )
        tokenizers = {}
        for name, folder in (
            ("retriever_tokenizer", model.config.retriever_tokenizer_folder),
            ("decoder_tokenizer", model.config.decoder_tokenizer_folder),
        ):
            subfolder = "/".join(part for part in (hub_kwargs.get("subfolder", ""), folder) if part)
            try:
                tokenizers[name] = AutoTokenizer.from_pretrained(  # an empty config: see `from_dual_encoder`
                    pretrained_model_name_or_path, config=PreTrainedConfig(), **(hub_kwargs | {"subfolder": subfolder})
                )
            except OSError:  # saved without this tokenizer: the operations that need it say so
                tokenizers[name] = None
        model.set_tokenizers(**tokenizers)
        return loaded


__all__ = [
    "RagCaptionerModel",
    "RagCaptionerOutput",
    "RagCaptionerPreTrainedModel",
    "decoder_layer_stack",
    "retriever_lambda_schedule",
]
