"""What a new user hits first: empty and NaN images get errors naming the image, and a run on the user's own files
never puts a data set it did not use on the model card."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from hub import build_model_card
from processing import VLPProcessor
from processing.processing_images import check_image, validate_images
from train.arguments import parse_arguments
from train.backbones import load_image_processor
from train.runner import EvaluationReport
from train.sign2text import Sign2TextTask
from train.vlp import VLPTask

GOOD = Image.new("RGB", (8, 8), "red")


@pytest.mark.parametrize(
    "bad, message",
    [
        (Image.new("RGB", (0, 0)), r"Image 1 is empty \(0×0 pixels\)"),
        (Image.new("RGB", (5, 0)), r"Image 1 is empty \(5×0 pixels\)"),
        (np.zeros((0, 0, 3), np.uint8), r"Image 1 is empty \(shape \(0, 0, 3\)\)"),
        (torch.zeros(3, 4, 0), r"Image 1 is empty \(shape \(3, 4, 0\)\)"),
        (np.full((8, 8, 3), np.nan, np.float32), r"Image 1 holds 192 NaN values"),
        (torch.tensor([[[0.5, float("inf")]]]).expand(3, 2, 2), r"Image 1 holds 6 inf values"),
        (Image.fromarray(np.array([[0.5, np.nan]], np.float32), mode="F"), r"Image 1 holds 1 NaN values"),
    ],
)
def test_empty_and_nan_images_are_named_before_the_image_processor(tokenizer, bad, message):
    processor = VLPProcessor(load_image_processor(None, 16), tokenizer)
    with pytest.raises(ValueError, match=message):
        processor(images=[GOOD, bad], text=["a", "b"])


def test_image_checks_name_the_item_the_caller_gives_and_pass_good_images():
    with pytest.raises(ValueError, match="The image of problem 4 is empty"):
        check_image(Image.new("RGB", (0, 3)), "The image of problem 4")
    with pytest.raises(TypeError, match="Image 0 is a str"):
        validate_images(["cat.png"])
    batch = np.zeros((2, 8, 8, 3), np.float32)
    assert len(validate_images(batch)) == 2
    assert validate_images(GOOD) == [GOOD]


def vlp_task(*argv: str) -> VLPTask:
    return VLPTask(*parse_arguments(*VLPTask.argument_groups, argv=list(argv)))


def card_for(task) -> tuple[str, str, str]:
    """`(dataset_name, dataset_type, rendered card)` of the task's card after a stand-in evaluation."""
    task._pairs = SimpleNamespace(single_side=[0, 1])
    task.model_config = SimpleNamespace(sequence_config=SimpleNamespace(num_hidden_layers=1), decoder_layers=1)
    headline = dict.fromkeys(("R@1", "WER", "BLEU-4", "ROUGE-L", "text_only_WER"), 0.5)
    report = EvaluationReport(metrics={}, headline=headline, tables="| table |")
    fields = task.card_fields(report)
    return fields["dataset_name"], fields["dataset_type"], build_model_card(
        **{"body_markdown": report.tables, "results": report.headline, **fields}
    )


COCO_FORMAT = ["--dataset", "coco", "--coco_annotation_file", "my_data/shop_captions.json", "--coco_image_root", "x"]


def test_a_users_coco_format_file_is_named_after_the_file_not_coco():
    name, hub_id, card = card_for(vlp_task(*COCO_FORMAT))
    assert (name, hub_id) == ("shop_captions.json", "shop_captions.json")
    assert "coco" not in card.lower()


def test_dataset_name_from_the_user_goes_on_the_card():
    name, hub_id, card = card_for(vlp_task(*COCO_FORMAT, "--dataset_name", "Shop Photos 2024"))
    assert (name, hub_id) == ("Shop Photos 2024", "shop-photos-2024")
    assert "datasets:\n- shop-photos-2024" in card and "on Shop Photos 2024" in card


def test_embedded_data_keeps_its_own_name_and_refuses_another():
    assert card_for(vlp_task())[:2] == ("embedded synthetic shapes", "embedded-synthetic-shapes")
    with pytest.raises(ValueError, match="embedded synthetic data keeps its own name"):
        vlp_task("--dataset_name", "COCO")


def test_sign2text_card_names_the_users_keypoint_table():
    argv = ["--dataset", "keypoint_table", "--train_table", "t.tsv", "--eval_table", "lab/held_out.tsv", "--keypoint_dir", "kp"]
    task = Sign2TextTask(*parse_arguments(*Sign2TextTask.argument_groups, argv=argv))
    name, hub_id, card = card_for(task)
    assert (name, hub_id) == ("held_out.tsv", "held_out.tsv")
    assert "keypoint_table" not in card and "synthetic" not in card
