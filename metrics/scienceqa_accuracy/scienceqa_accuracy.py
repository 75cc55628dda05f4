# Copyright 2025 The HF Multimodal Models Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""ScienceQA accuracy, overall and by the leaderboard's categories, with unparsed answers counted as wrong."""

import datasets
import evaluate

_DESCRIPTION = """
Multiple-choice accuracy on ScienceQA, in percent, overall and for the categories of the ScienceQA leaderboard
(the original evaluation script's conditions):

| key | problems |
|---|---|
| `NAT`, `SOC`, `LAN` | subject "natural science", "social science", "language science" |
| `TXT` | with a text context (non-empty hint) |
| `IMG` | with an image |
| `NO` | with neither (TXT and IMG overlap; NO is disjoint from both) |
| `G1-6`, `G7-12` | grade "grade1" … "grade6", "grade7" … "grade12" |

A prediction is an option index, or -1 when the model's answer could not be parsed into an option. Such an answer
is wrong (never replaced by a random option, as the reference Multimodal-CoT code does) and counted in
`unparsed`. A category without problems has accuracy `None`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): chosen option index per problem, -1 for an unparsed answer.
    references (`list` of `int`): the correct option index.
    subjects (`list` of `str`): ScienceQA `subject` ("natural science", "social science", "language science").
    has_context (`list` of `bool`): the problem has a non-empty hint.
    has_image (`list` of `bool`): the problem has an image.
    grades (`list` of `str`): ScienceQA `grade` ("grade1" … "grade12").

Returns:
    `accuracy` (`float`, 0-100) and `NAT`, `SOC`, `LAN`, `TXT`, `IMG`, `NO`, `G1-6`, `G7-12` (`float`, 0-100, or
    `None` for an empty category); `num_<category>` (`int`) for each; `unparsed` (`int`); `num_examples` (`int`).

Examples:
    >>> accuracy = evaluate.load("metrics/scienceqa_accuracy")
    >>> results = accuracy.compute(
    ...     predictions=[1, -1], references=[1, 0], subjects=["natural science", "language science"],
    ...     has_context=[False, True], has_image=[True, False], grades=["grade2", "grade8"],
    ... )
    >>> results["accuracy"], results["IMG"], results["TXT"], results["unparsed"]
    (50.0, 100.0, 0.0, 1)
"""

_CITATION = """
@inproceedings{lu2022learn,
  title = {Learn to Explain: Multimodal Reasoning via Thought Chains for Science Question Answering},
  author = {Lu, Pan and Mishra, Swaroop and Xia, Tony and Qiu, Liang and Chang, Kai-Wei and Zhu, Song-Chun and
            Tafjord, Oyvind and Clark, Peter and Kalyan, Ashwin},
  booktitle = {NeurIPS},
  year = {2022},
}
"""

SUBJECTS = {"NAT": "natural science", "SOC": "social science", "LAN": "language science"}
LOWER_GRADES = {f"grade{grade}" for grade in range(1, 7)}
UPPER_GRADES = {f"grade{grade}" for grade in range(7, 13)}
CATEGORIES = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")


def category_masks(subjects, has_context, has_image, grades) -> dict[str, list[bool]]:
    """Which problems each leaderboard category holds."""
    masks = {name: [subject == value for subject in subjects] for name, value in SUBJECTS.items()}
    masks["TXT"] = [bool(flag) for flag in has_context]
    masks["IMG"] = [bool(flag) for flag in has_image]
    masks["NO"] = [not text and not image for text, image in zip(masks["TXT"], masks["IMG"])]
    masks["G1-6"] = [grade in LOWER_GRADES for grade in grades]
    masks["G7-12"] = [grade in UPPER_GRADES for grade in grades]
    return masks


def scienceqa_accuracy(predictions, references, subjects, has_context, has_image, grades) -> dict:
    columns = {"references": references, "subjects": subjects, "has_context": has_context, "has_image": has_image, "grades": grades}
    for name, column in columns.items():
        if len(column) != len(predictions):
            raise ValueError(f"Got {len(predictions)} predictions but {len(column)} {name}; pass one per problem.")
    if not predictions:
        raise ValueError("No problems to evaluate: `predictions` is empty.")
    unknown_grades = sorted({grade for grade in grades if grade not in LOWER_GRADES | UPPER_GRADES})
    if unknown_grades:
        raise ValueError(f"Grades {unknown_grades} are not 'grade1' … 'grade12'.")
    bad = [(index, value) for index, value in enumerate(predictions) if value < -1]
    if bad:
        raise ValueError(f"Prediction {bad[0][0]} is {bad[0][1]}; predictions are option indices, or -1 for unparsed.")
    correct = [prediction == reference for prediction, reference in zip(predictions, references)]
    results = {"accuracy": 100.0 * sum(correct) / len(correct)}
    for name, mask in category_masks(subjects, has_context, has_image, grades).items():
        hits = [hit for hit, member in zip(correct, mask) if member]
        results[name] = 100.0 * sum(hits) / len(hits) if hits else None
        results[f"num_{name}"] = len(hits)
    results["unparsed"] = sum(prediction == -1 for prediction in predictions)
    results["num_examples"] = len(predictions)
    return results


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ScienceQAAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "subjects": datasets.Value("string"),
                    "has_context": datasets.Value("bool"),
                    "has_image": datasets.Value("bool"),
                    "grades": datasets.Value("string"),
                }
            ),
            reference_urls=["https://scienceqa.github.io/", "https://github.com/amazon-science/mm-cot"],
        )

    def _compute(self, predictions, references, subjects, has_context, has_image, grades):
        return scienceqa_accuracy(predictions, references, subjects, has_context, has_image, grades)
