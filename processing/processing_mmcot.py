"""Processor of the Multimodal-CoT T5: ScienceQA-style problems in, prompts, vision inputs and targets out.

One model serves both stages, told apart by where the prompt ends (the original Multimodal-CoT's formats):

- `"rationale"` (QCM → LE): `Question: … Context: … Options: (A) … (B) … Solution:` → `<lecture> <solution>`;
- `"answer"` (QCMG → A): the same with `Solution: <rationale> Answer:` appended → `The answer is <option>.`;
- `"direct"` (QCM → A, the no-rationale baseline): `… Options: … Answer:` → `The answer is <option>.`.

The answer names the option by its text where the original writes its letter (`The answer is (B).`): with the letter
a T5 trained from scratch must first learn which letter stands before which option (on the embedded set it stayed
at chance for 500 steps, even from the gold rationale), and the text maps back to the letter without doubt. The
letter form is still read (a model trained the original way).

Answers are parsed deterministically (`parse_answer`): an answer that names no option is unparsed, never a guess.
"""

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin

from .processing_images import check_image

STAGES = ("rationale", "answer", "direct")
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
NO_CONTEXT = "N/A"
_LETTER = re.compile(r"\(([A-Z])\)")


def normalize_whitespace(text: str) -> str:
    """One space between words: the prompts are single lines, as in the original (its newlines become spaces)."""
    return " ".join(text.split())


def format_options(choices: Sequence[str]) -> str:
    return " ".join(f"({OPTION_LETTERS[index]}) {choice}" for index, choice in enumerate(choices))


def format_answer(choices: Sequence[str], index: int) -> str:
    """The stage-2 target, `The answer is <option text>.`"""
    return f"The answer is {normalize_whitespace(choices[index])}."


def format_prompt(problem: dict, stage: str, rationale: str | None = None) -> str:
    """The model input for one problem at one stage (see the module docstring)."""
    context = normalize_whitespace(problem.get("hint") or "") or NO_CONTEXT
    prompt = (
        f"Question: {normalize_whitespace(problem['question'])} Context: {context} "
        f"Options: {format_options([normalize_whitespace(choice) for choice in problem['choices']])}"
    )
    if stage == "rationale":
        return f"{prompt} Solution:"
    if stage == "answer":
        return f"{prompt} Solution: {normalize_whitespace(rationale)} Answer:"
    return f"{prompt} Answer:"


def format_target(problem: dict, stage: str) -> str:
    """The training target: lecture and solution for stage 1, the answer sentence otherwise."""
    if stage == "rationale":
        return normalize_whitespace(f"{problem.get('lecture') or ''} {problem.get('solution') or ''}")
    return format_answer(problem["choices"], problem["answer"])


def parse_answer(text: str, choices: Sequence[str]) -> int | None:
    """
    The option index an answer names, or `None`.

    The answer is read after its last "answer is": either one option's exact text (`The answer is blue.`), or an
    option letter in brackets (`The answer is (B).`, the original's form). Anything else — text that is no option
    or matches several, a letter beyond the options, no "answer is" at all — is unparsed (`None`): it counts as
    wrong and is reported, never replaced by a guess.
    """
    if "answer is" not in text:
        return None
    named = normalize_whitespace(text.rsplit("answer is", 1)[1]).removesuffix(".").strip()
    letter = _LETTER.fullmatch(named)
    if letter is not None:
        index = OPTION_LETTERS.index(letter.group(1))
        return index if index < len(choices) else None
    matches = [index for index, choice in enumerate(choices) if normalize_whitespace(choice) == named]
    return matches[0] if len(matches) == 1 else None


@dataclass
class MMCoTPrediction:
    """What `MMCoTForConditionalGeneration.solve` returns for one problem."""

    rationale: str | None
    """The stage-1 rationale the answer was read from (`None` for a direct answer)."""
    answer_text: str
    """The stage-2 output as generated, e.g. "The answer is blue."."""
    choice_index: int | None
    """Index of the chosen option; `None` when `answer_text` names none (unparsed)."""
    letter: str | None
    """Its letter, e.g. "B"."""
    choice: str | None
    """Its text."""


def _validate_problem(index: int, problem, with_targets: bool) -> None:
    if not isinstance(problem, dict):
        raise TypeError(f"Problem {index} is a {type(problem).__name__}; pass dicts with 'question' and 'choices'.")
    question, choices = problem.get("question"), problem.get("choices")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"Problem {index} has no question text; 'question' must be a non-empty string.")
    if not isinstance(choices, (list, tuple)) or not choices:
        raise ValueError(f"Problem {index} has no options; 'choices' must be a non-empty list of strings.")
    if len(choices) > len(OPTION_LETTERS):
        raise ValueError(f"Problem {index} has {len(choices)} options; at most {len(OPTION_LETTERS)} have letters.")
    if not all(isinstance(choice, str) and choice.strip() for choice in choices):
        raise ValueError(f"Problem {index} has an empty or non-string option: {list(choices)!r}.")
    if with_targets:
        answer = problem.get("answer")
        if not isinstance(answer, (int, np.integer)) or not 0 <= answer < len(choices):
            raise ValueError(
                f"Problem {index} has answer {answer!r} but {len(choices)} options; it must be an index from 0 to "
                f"{len(choices) - 1}."
            )


class MMCoTProcessor(ProcessorMixin):
    r"""
    Turns problems into model inputs for one stage: the prompt (`input_ids`, `attention_mask`), the vision input
    (`pixel_values` through the image processor, or stacked `vision_features`) with `image_mask` (1 where the problem
    has an image), and with `return_labels=True` the targets as `labels` (ending in `</s>`, padded with -100).

    Args:
        image_processor: a transformers image processor, used when the model has a vision tower (it must be set
            even for a features model, as the processor's saved form requires it; it is then unused).
        tokenizer: the T5 tokenizer (pad 0, `</s>` 1, unk 2): the offline Unigram one or a pretrained T5's.
        max_source_length (`int`, defaults to 512): prompts longer than this are cut at the end, with a warning;
            the original's length.
        max_target_length (`int`, defaults to 512): targets are cut to this many tokens (counting `</s>`), with a
            warning; the original's rationale length.
        vision_feature_dim (`int`, *optional*): set for a model that reads precomputed features of this width;
            `None` for a model with a vision tower, which reads images.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        max_source_length: int = 512,
        max_target_length: int = 512,
        vision_feature_dim: int | None = None,
        **kwargs,
    ):
        if max_source_length < 8 or max_target_length < 2:
            raise ValueError(
                f"max_source_length ({max_source_length}) and max_target_length ({max_target_length}) leave no room "
                "for a prompt or an answer."
            )
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.vision_feature_dim = vision_feature_dim
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        problems: Sequence[dict],
        stage: str | Sequence[str] = "rationale",
        rationales: Sequence[str | None] | None = None,
        return_labels: bool = False,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """
        Args:
            problems: dicts with `question`, `choices`, optional `hint`, and `image` (PIL image or array) or
                `vision_features` (`(tokens, vision_feature_dim)`); with `return_labels` also `answer` (index) and,
                for stage 1, `lecture` and `solution`. Rows of a `load_scienceqa` split are such dicts.
            stage: `"rationale"`, `"answer"` (needs `rationales`) or `"direct"`; or one of them per problem (a
                training batch that mixes the stages).
            rationales: one per problem (`None` where the stage is not `"answer"`): generated ones at test time, gold
                ones in training.
            return_labels: add the stage's targets as `labels`.
        """
        if isinstance(problems, dict):
            problems = [problems]
        problems = list(problems)
        if not problems:
            raise ValueError("Got no problems; pass at least one.")
        stages = [stage] * len(problems) if isinstance(stage, str) else list(stage)
        if len(stages) != len(problems):
            raise ValueError(f"Got {len(stages)} stages for {len(problems)} problems; pass one stage, or one per problem.")
        unknown = sorted({name for name in stages if name not in STAGES})
        if unknown:
            raise ValueError(f"stage must be one of {STAGES}, got {unknown[0]!r}.")
        for index, problem in enumerate(problems):
            _validate_problem(index, problem, with_targets=return_labels)
        if "answer" in stages:
            if rationales is None or len(rationales) != len(problems):
                raise ValueError(
                    f"Stage 'answer' needs one rationale per problem: got {len(problems)} problems and "
                    f"{'no' if rationales is None else len(rationales)} rationales."
                )
            missing = [index for index, name in enumerate(stages) if name == "answer" and not isinstance(rationales[index], str)]
            if missing:
                raise ValueError(f"Problem {missing[0]} is at stage 'answer' but its rationale is {rationales[missing[0]]!r}.")
        elif rationales is not None:
            raise ValueError(f"Stage {stage!r} reads no rationale; pass rationales only with stage='answer'.")

        prompts = [
            format_prompt(problem, name, rationales[index] if name == "answer" else None)
            for index, (problem, name) in enumerate(zip(problems, stages))
        ]
        prompt_ids = self._encode(prompts, self.max_source_length, "prompt", "max_source_length")
        longest = max(len(ids) for ids in prompt_ids)
        pad = self.tokenizer.pad_token_id
        data = {
            "input_ids": [ids + [pad] * (longest - len(ids)) for ids in prompt_ids],
            "attention_mask": [[1] * len(ids) + [0] * (longest - len(ids)) for ids in prompt_ids],
        }
        if return_labels:
            targets = [format_target(problem, name) for problem, name in zip(problems, stages)]
            target_ids = self._encode(targets, self.max_target_length, "target", "max_target_length")
            longest = max(len(ids) for ids in target_ids)
            data["labels"] = [ids + [-100] * (longest - len(ids)) for ids in target_ids]
        data.update(self._vision_inputs(problems))
        return BatchFeature(data, tensor_type=return_tensors)

    def _encode(self, texts: list[str], max_length: int, what: str, setting: str) -> list[list[int]]:
        """Token ids ending in `</s>`; longer texts keep their first `max_length - 1` tokens and `</s>`."""
        encoded = self.tokenizer(texts)["input_ids"]
        too_long = [index for index, ids in enumerate(encoded) if len(ids) > max_length]
        if too_long:
            warnings.warn(
                f"{len(too_long)} {what}s (e.g. number {too_long[0]}, {len(encoded[too_long[0]])} tokens) are longer "
                f"than {max_length} tokens and are cut at the end; raise the processor's {setting}.",
                stacklevel=3,
            )
            eos = self.tokenizer.eos_token_id
            encoded = [ids if len(ids) <= max_length else ids[: max_length - 1] + [eos] for ids in encoded]
        return encoded

    def _vision_inputs(self, problems: list[dict]) -> dict[str, torch.Tensor]:
        """`image_mask` always; `pixel_values` or `vision_features` when at least one problem has an image (zeros,
        masked, for the others)."""
        key = "image" if self.vision_feature_dim is None else "vision_features"
        for index, problem in enumerate(problems):
            wrong_key = "vision_features" if key == "image" else "image"
            if problem.get(wrong_key) is not None and problem.get(key) is None:
                raise ValueError(
                    f"Problem {index} has {wrong_key!r} but this processor reads {key!r}: "
                    + (
                        "the model has a vision tower; pass the image."
                        if key == "image"
                        else f"the model reads precomputed features of width {self.vision_feature_dim}; pass the "
                        "problem's 'vision_features' (see data.scienceqa.load_vision_features)."
                    )
                )
        present = [index for index, problem in enumerate(problems) if problem.get(key) is not None]
        image_mask = torch.zeros(len(problems), dtype=torch.long)
        image_mask[present] = 1
        if not present:
            return {"image_mask": image_mask}
        if key == "image":
            images = [problems[index]["image"] for index in present]
            for index, image in zip(present, images):
                check_image(image, f"The image of problem {index}")
            pixels = self.image_processor(images, return_tensors="pt")["pixel_values"]
            batch = pixels.new_zeros(len(problems), *pixels.shape[1:])
            batch[present] = pixels
            return {"pixel_values": batch, "image_mask": image_mask}
        arrays = [np.asarray(problems[index]["vision_features"], dtype=np.float32) for index in present]
        shape = arrays[0].shape
        for index, array in zip(present, arrays):
            if array.ndim != 2 or array.shape[1] != self.vision_feature_dim or array.shape != shape:
                raise ValueError(
                    f"vision_features of problem {index} have shape {array.shape}; expected (tokens, "
                    f"{self.vision_feature_dim}) with the same token count as the batch's other problems {shape}."
                )
        features = torch.zeros(len(problems), *shape)
        features[present] = torch.from_numpy(np.stack(arrays))
        return {"vision_features": features, "image_mask": image_mask}

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Generated ids to text, without `<pad>`/`</s>`."""
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        return [text.strip() for text in texts]

    def decode_answers(
        self, answer_texts: Sequence[str], problems: Sequence[dict], rationales: Sequence[str] | None = None
    ) -> list[MMCoTPrediction]:
        """Stage-2 outputs to `MMCoTPrediction`s, through `parse_answer`."""
        predictions = []
        for index, (text, problem) in enumerate(zip(answer_texts, problems, strict=True)):
            choice_index = parse_answer(text, problem["choices"])
            predictions.append(
                MMCoTPrediction(
                    rationale=rationales[index] if rationales is not None else None,
                    answer_text=text,
                    choice_index=choice_index,
                    letter=None if choice_index is None else OPTION_LETTERS[choice_index],
                    choice=None if choice_index is None else problem["choices"][choice_index],
                )
            )
        return predictions

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "vision_features", "image_mask", "labels"]


__all__ = [
    "MMCoTPrediction",
    "MMCoTProcessor",
    "STAGES",
    "format_answer",
    "format_prompt",
    "format_target",
    "parse_answer",
]
