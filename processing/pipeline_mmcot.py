"""`transformers.pipeline` task of the Multimodal-CoT T5: a ScienceQA-style problem in, rationale and answer out.

`hub.save_for_hub` ships this file with the model and registers it in `config.json`'s `custom_pipelines` under the
task name "multimodal-chain-of-thought" (transformers has no such task of its own).
"""

from dataclasses import asdict

from transformers import Pipeline
from transformers.image_utils import load_image


class MMCoTPipeline(Pipeline):
    """A problem is a dict with `question`, `choices` (option texts), optional `hint` (the context) and optional
    `image` (PIL image, array or path; `None` for none). Returns `rationale`, `answer_text`, `choice_index`, `letter`
    and `choice` (the last three `None` when the answer could not be parsed), through the model's two-stage
    `solve`. Keyword arguments of `generate` (`num_beams`, ...) pass through."""

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    hub_pipeline_tag = "visual-question-answering"  # the Hub's nearest task; the answer comes with a rationale
    usage = """from transformers import pipeline

solver = pipeline("multimodal-chain-of-thought", model="{model_id}", trust_remote_code=True)
solver({{"question": "Which of these is a mammal?", "choices": ["frog", "whale"], "hint": "", "image": "picture.png"}})
# {{'rationale': '...', 'answer_text': 'The answer is whale.', 'choice_index': 1, 'letter': 'B', 'choice': 'whale'}}"""

    def __call__(self, problems, **kwargs):
        """`problems`: one problem dict, or a list of them."""
        return super().__call__(problems, **kwargs)

    def _sanitize_parameters(self, timeout=None, **generate_kwargs):
        return ({} if timeout is None else {"timeout": timeout}), generate_kwargs, {}

    def preprocess(self, problem, timeout: float | None = None):
        if not isinstance(problem, dict) or "question" not in problem or "choices" not in problem:
            raise ValueError("A problem is a dict with 'question', 'choices' and optionally 'hint' and 'image'.")
        image = problem.get("image")
        return {**problem, "image": load_image(image, timeout=timeout) if isinstance(image, str) else image}

    def _forward(self, problem, **generate_kwargs):
        return {"prediction": self.model.solve(self.processor, problem, **generate_kwargs)}

    def postprocess(self, model_outputs):
        return asdict(model_outputs["prediction"])


__all__ = ["MMCoTPipeline"]
