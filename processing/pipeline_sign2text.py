"""`transformers.pipeline` task of Sign2Text: a sign clip in, its sentence out.

`hub.save_for_hub` ships this file with the model and registers it in `config.json`'s `custom_pipelines` under the
task name "sign-language-translation" (transformers has no such task of its own).
"""

from transformers import Pipeline

from .processing_pose import load_clip


class Sign2TextPipeline(Pipeline):
    """A clip is a `(frames, keypoints, dims)` keypoint array, a `.npy` path holding one, or a `.npz` path / dict with
    `keypoints` and `frame_features` (a model trained with frame features needs them). Returns
    `{"translation_text": sentence}` per clip, as transformers' translation pipeline does. Keyword arguments of
    `generate` (`num_beams`, `max_new_tokens`, `do_sample`, ...) pass through."""

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    hub_pipeline_tag = "translation"  # the Hub's nearest task: it has none for sign language or pose input
    usage = """from transformers import pipeline

translator = pipeline("sign-language-translation", model="{model_id}", trust_remote_code=True)
translator("clip.npz")  # .npz with keypoints (frames, keypoints, dims) and frame_features; or a keypoint array / .npy
# {{'translation_text': 'where is the station'}}
translator("clip.npz", num_beams=4)"""

    def _sanitize_parameters(self, **generate_kwargs):
        return {}, generate_kwargs, {}

    def preprocess(self, clip):
        config = self.model.config.sequence_config
        arrays = load_clip(clip, config.use_keypoints, config.use_visual_features)
        return self.processor(**{name: None if array is None else [array] for name, array in arrays.items()})

    def _forward(self, model_inputs, **generate_kwargs):
        return {"sequences": self.model.generate(**model_inputs, **generate_kwargs)}

    def postprocess(self, model_outputs):
        return {"translation_text": self.processor.batch_decode(model_outputs["sequences"])[0]}


__all__ = ["Sign2TextPipeline"]
