"""`transformers.pipeline` tasks of the VLP dual encoder: score an image, or a sign clip, against candidate texts.

`hub.save_for_hub` ships this file with the model and registers the classes in `config.json`'s `custom_pipelines`,
so `pipeline("zero-shot-image-classification", model=<folder or Hub id>, trust_remote_code=True)` runs without this
repository installed.
"""

import torch
from transformers import Pipeline
from transformers.image_utils import load_image

from .processing_pose import load_clip


class VLPZeroShotPipeline(Pipeline):
    """Shared by both inputs: candidate texts against one visual input, scores as in `CLIPModel` pipelines (softmax
    over the candidates for the CLIP loss, a sigmoid per candidate for SigLIP)."""

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __call__(self, inputs, candidate_labels: list[str] | None = None, **kwargs):
        """`inputs`: one visual input or a list of them; returns, per input, `[{"label", "score"}]` best first."""
        return super().__call__(inputs, candidate_labels=candidate_labels, **kwargs)

    def _sanitize_parameters(self, candidate_labels=None, hypothesis_template=None, timeout=None):
        preprocess = {"candidate_labels": candidate_labels}
        if hypothesis_template is not None:
            preprocess["hypothesis_template"] = hypothesis_template
        if timeout is not None:
            preprocess["timeout"] = timeout
        return preprocess, {}, {}

    def _visual_inputs(self, item, timeout: float | None) -> dict:
        raise NotImplementedError

    def preprocess(self, item, candidate_labels=None, hypothesis_template: str = "{}", timeout: float | None = None):
        if not candidate_labels:
            raise ValueError("Pass candidate_labels=[...], the texts to score the input against.")
        texts = [hypothesis_template.format(label) for label in candidate_labels]
        return {**self.processor(text=texts), **self._visual_inputs(item, timeout), "candidate_labels": candidate_labels}

    def _forward(self, model_inputs):
        candidate_labels = model_inputs.pop("candidate_labels")
        outputs = self.model(**model_inputs)
        return {"candidate_labels": candidate_labels, "logits": outputs.logits_per_visual[0]}

    def postprocess(self, model_outputs):
        logits = model_outputs["logits"].float()
        scores = torch.sigmoid(logits) if self.model.config.loss_type == "siglip" else logits.softmax(dim=-1)
        ranked = sorted(zip(scores.tolist(), model_outputs["candidate_labels"]), key=lambda pair: -pair[0])
        return [{"score": score, "label": label} for score, label in ranked]


class VLPZeroShotImagePipeline(VLPZeroShotPipeline):
    """Images (PIL, array, local path or URL) against candidate captions, for a VLP model with an image tower."""

    hub_pipeline_tag = "zero-shot-image-classification"
    usage = """from transformers import pipeline

classifier = pipeline("zero-shot-image-classification", model="{model_id}", trust_remote_code=True)
classifier("photo.png", candidate_labels=["a red circle in the middle", "a blue square at the top"])
# [{{'score': 0.93, 'label': 'a red circle in the middle'}}, {{'score': 0.07, 'label': 'a blue square at the top'}}]"""

    def _visual_inputs(self, item, timeout):
        image = load_image(item, timeout=timeout) if isinstance(item, str) else item
        return self.processor(images=[image])


class VLPZeroShotSignPipeline(VLPZeroShotPipeline):
    """Sign clips against candidate sentences, for a VLP model with a pose/feature sequence tower. A clip is a
    `(frames, keypoints, dims)` array, a `.npy` path, or a `.npz` path / dict with `keypoints` and `frame_features`."""

    hub_pipeline_tag = "feature-extraction"  # the Hub has no task for sign clips; this is what the model computes
    usage = """from transformers import pipeline

matcher = pipeline("zero-shot-sign-classification", model="{model_id}", trust_remote_code=True)
matcher("clip.npz", candidate_labels=["where is the station", "i like coffee"])  # .npz: keypoints, frame_features
# [{{'score': 0.97, 'label': 'where is the station'}}, {{'score': 0.03, 'label': 'i like coffee'}}]"""

    def _visual_inputs(self, item, timeout):
        config = self.model.config.sequence_config
        clip = load_clip(item, config.use_keypoints, config.use_visual_features)
        return self.processor(**{name: None if array is None else [array] for name, array in clip.items()})


__all__ = ["VLPZeroShotImagePipeline", "VLPZeroShotPipeline", "VLPZeroShotSignPipeline"]
