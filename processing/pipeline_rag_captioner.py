"""`transformers.pipeline` task of the RAG captioner: "image-text-to-text" (transformers 5 has no image-to-text task).

`hub.save_for_hub` ships this file with the model and registers it in `config.json`'s `custom_pipelines`, so
`pipeline("image-text-to-text", model=<folder or Hub id>, trust_remote_code=True)` captions images without this
repository installed, and can return the datastore captions the decoder was given.
"""

import math

from transformers import Pipeline
from transformers.image_utils import load_image


class RagCaptioningPipeline(Pipeline):
    """An image (PIL, array, local path or URL) in, `{"generated_text": caption}` out; with `return_neighbours=True`
    also `"retrieved_captions": [{"caption", "score"}]`, the captions retrieved for the image and fed to the decoder,
    best first. The captioner writes without a text prompt, so `text` is refused. Keyword arguments of `generate`
    (`num_beams`, `max_new_tokens`, ...) pass through."""

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    hub_pipeline_tag = "image-text-to-text"
    usage = """from transformers import pipeline

captioner = pipeline("image-text-to-text", model="{model_id}", trust_remote_code=True)
captioner("photo.png", return_neighbours=True)
# {{'generated_text': 'a red circle in the middle', 'retrieved_captions': [{{'caption': ..., 'score': 0.91}}, ...]}}"""

    def __call__(self, images, text=None, **kwargs):
        if text is not None:
            raise ValueError("This captioner writes without a prompt; pass only images (and return_neighbours=True).")
        return super().__call__(images, **kwargs)

    def _sanitize_parameters(self, return_neighbours=None, timeout=None, **generate_kwargs):
        preprocess = {} if timeout is None else {"timeout": timeout}
        postprocess = {} if return_neighbours is None else {"return_neighbours": return_neighbours}
        return preprocess, generate_kwargs, postprocess

    def preprocess(self, image, timeout: float | None = None):
        image = load_image(image, timeout=timeout) if isinstance(image, str) else image
        return self.processor(images=[image])

    def _forward(self, model_inputs, **generate_kwargs):
        pixel_values = model_inputs["pixel_values"]
        retrieved = self.model.retrieve(pixel_values)
        sequences = self.model.generate(pixel_values=pixel_values, retrieved_ids=retrieved.ids, **generate_kwargs)
        return {"sequences": sequences, "retrieved": retrieved}

    def postprocess(self, model_outputs, return_neighbours: bool = False):
        result = {"generated_text": self.processor.batch_decode(model_outputs["sequences"])[0]}
        if return_neighbours:
            retrieved = model_outputs["retrieved"]
            scores = [float(score) for score in retrieved.scores[0] if not math.isnan(score)]
            result["retrieved_captions"] = [
                {"caption": caption, "score": score} for caption, score in zip(retrieved.captions[0], scores)
            ]
        return result


__all__ = ["RagCaptioningPipeline"]
