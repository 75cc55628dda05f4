"""`transformers.pipeline` on saved folders, in a fresh process where the project cannot be imported: the pipeline
classes travel with the code (`custom_pipelines` in config.json) and give what the model computes in-process."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.pipelines import get_supported_tasks

import tiny_models
from conftest import tiny_vlp_config
from fresh_process import run_outside_project
from hub import build_model_card, pipeline_card_fields, save_for_hub, verify_checkpoint
from modeling import Sign2TextModel, VLPModel
from processing import Sign2TextProcessor
from processing.pipeline_mmcot import MMCoTPipeline
from processing.pipeline_rag_captioner import RagCaptioningPipeline
from processing.pipeline_sign2text import Sign2TextPipeline
from processing.pipeline_vlp import VLPZeroShotImagePipeline, VLPZeroShotSignPipeline

LABELS = ["a red circle in the middle", "a blue square at the top", "a green triangle"]
SENTENCES = ["where is the station", "i like coffee"]
PROBLEM = {"question": "Which is a mammal?", "choices": ["frog", "whale"], "hint": "Whales breathe air."}
IMAGE = Image.new("RGB", (40, 30), "red")

PIPELINE_SCRIPT = """
import json
from PIL import Image
from transformers import pipeline

vlp, sign2text, rag, mmcot, clip_npz, keypoints_npy, output = sys.argv[1:8]
labels, sentences, problem = {labels!r}, {sentences!r}, {problem!r}
image = Image.new("RGB", (40, 30), "red")
classify = pipeline("zero-shot-image-classification", model=vlp, trust_remote_code=True)
match = pipeline("zero-shot-sign-classification", model=vlp, trust_remote_code=True)
translate = pipeline(model=sign2text, trust_remote_code=True)  # its one custom task is found without naming it
caption = pipeline("image-text-to-text", model=rag, trust_remote_code=True)
solve = pipeline("multimodal-chain-of-thought", model=mmcot, trust_remote_code=True)
pipelines = (classify, match, translate, caption, solve)
results = {{
    "classes": [type(p).__module__ + "." + type(p).__name__ for p in pipelines],
    "task": translate.task,
    "image": classify(image, candidate_labels=labels),
    "clip": match(clip_npz, candidate_labels=sentences),
    "translation": translate(keypoints_npy),
    "beams": translate(keypoints_npy, num_beams=2),
    "caption": caption(image, return_neighbours=True),
    "solution": solve({{**problem, "image": image}}),
}}
with open(output, "w") as handle:
    json.dump(results, handle)
""".format(labels=LABELS, sentences=SENTENCES, problem=PROBLEM)


@pytest.fixture(scope="module")
def models(tokenizer):
    return tiny_models.build_all(tokenizer)


@pytest.fixture(scope="module")
def vlp(models):
    return models["vlp"]


@pytest.fixture(scope="module")
def sign2text(models):
    return models["sign2text"]


@pytest.fixture(scope="module")
def clip() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"keypoints": rng.normal(size=(12, 21, 2)).astype(np.float32), "frame_features": rng.normal(size=(12, 8)).astype(np.float32)}


def expected_scores(model, inputs, labels) -> list[dict]:
    """What the pipelines must return: the model's softmax over the candidates, best first."""
    with torch.no_grad():
        scores = model(**inputs).logits_per_visual[0].softmax(-1).tolist()
    return [{"score": s, "label": label} for s, label in sorted(zip(scores, labels), key=lambda pair: -pair[0])]


def assert_same_ranking(found, expected):
    assert [item["label"] for item in found] == [item["label"] for item in expected]
    assert np.allclose([item["score"] for item in found], [item["score"] for item in expected], atol=1e-5)


def test_task_names_against_the_installed_transformers():
    """The image task is transformers' own name (the custom class overrides it for this model); the other two are
    custom names that shadow nothing."""
    supported = get_supported_tasks()
    assert "zero-shot-image-classification" in supported
    assert "zero-shot-sign-classification" not in supported and "sign-language-translation" not in supported


def test_pipelines_run_from_the_saved_folders_in_a_fresh_process(models, clip, tmp_path):
    folders = tiny_models.save_all(models, tmp_path / "models")
    assert json.loads((folders["sign2text"] / "config.json").read_text())["custom_pipelines"] == {
        "sign-language-translation": {"impl": "pipeline_sign2text.Sign2TextPipeline", "pt": ["AutoModel"]}
    }
    np.savez(tmp_path / "clip.npz", **clip)
    np.save(tmp_path / "keypoints.npy", clip["keypoints"])
    output = tmp_path / "results.json"
    arguments = [folders[name] for name in ("vlp", "sign2text", "rag", "mmcot")]
    run_outside_project(PIPELINE_SCRIPT, [*arguments, tmp_path / "clip.npz", tmp_path / "keypoints.npy", output], tmp_path)
    results = json.loads(output.read_text())

    assert [name.rpartition(".")[2] for name in results["classes"]] == [
        "VLPZeroShotImagePipeline", "VLPZeroShotSignPipeline", "Sign2TextPipeline", "RagCaptioningPipeline", "MMCoTPipeline"
    ]
    assert all(name.startswith("transformers_modules.") for name in results["classes"])
    assert results["task"] == "sign-language-translation"
    (vlp_model, vlp_processor), (s2t_model, s2t_processor) = models["vlp"], models["sign2text"]
    image_inputs = {**vlp_processor(text=LABELS), **vlp_processor(images=[IMAGE])}
    assert_same_ranking(results["image"], expected_scores(vlp_model, image_inputs, LABELS))
    clip_inputs = {**vlp_processor(text=SENTENCES), **vlp_processor(keypoints=[clip["keypoints"]], frame_features=[clip["frame_features"]])}
    assert_same_ranking(results["clip"], expected_scores(vlp_model, clip_inputs, SENTENCES))
    keypoints = s2t_processor(keypoints=[clip["keypoints"]])
    for key, num_beams in (("translation", 1), ("beams", 2)):
        expected = s2t_processor.batch_decode(s2t_model.generate(**keypoints, num_beams=num_beams))[0]
        assert results[key] == {"translation_text": expected}

    rag_model, rag_processor = models["rag"]
    pixel_values = rag_processor(images=[IMAGE])["pixel_values"]
    retrieved = rag_model.retrieve(pixel_values)
    assert results["caption"]["generated_text"] == rag_processor.batch_decode(rag_model.generate(pixel_values=pixel_values))[0]
    assert [n["caption"] for n in results["caption"]["retrieved_captions"]] == retrieved.captions[0]
    assert np.allclose([n["score"] for n in results["caption"]["retrieved_captions"]], retrieved.scores[0], atol=1e-5)
    expected = models["mmcot"][0].solve(models["mmcot"][1], {**PROBLEM, "image": IMAGE})
    assert expected.rationale.strip() and results["solution"] == asdict(expected)


def test_a_model_registers_a_pipeline_per_visual_tower(vlp):
    both = vlp[0].hub_pipelines
    assert both == {"zero-shot-image-classification": VLPZeroShotImagePipeline, "zero-shot-sign-classification": VLPZeroShotSignPipeline}
    images_only = VLPModel(tiny_vlp_config(sequence_config=None))
    assert images_only.hub_pipelines == {"zero-shot-image-classification": VLPZeroShotImagePipeline}


def test_pipeline_inputs_are_checked_with_clear_errors(vlp, sign2text, clip, tmp_path):
    match = VLPZeroShotSignPipeline(model=vlp[0], processor=vlp[1], device=-1)
    with pytest.raises(ValueError, match="the clip has no frame_features; pass a mapping or .npz"):
        match(clip["keypoints"], candidate_labels=SENTENCES)
    with pytest.raises(ValueError, match="Pass candidate_labels"):
        match(clip)
    classify = VLPZeroShotImagePipeline(model=vlp[0], processor=vlp[1], device=-1)
    with pytest.raises(ValueError, match="Image 0 is empty"):
        classify(Image.new("RGB", (0, 0)), candidate_labels=LABELS)
    translate = Sign2TextPipeline(model=sign2text[0], processor=sign2text[1], device=-1)
    with pytest.raises(FileNotFoundError, match="missing.npy does not exist"):
        translate(str(tmp_path / "missing.npy"))
    with pytest.raises(ValueError, match=r"Keypoints of sequence 0 have shape \(12, 5, 2\)"):
        translate(clip["keypoints"][:, :5])
    batch = translate([clip["keypoints"], clip["keypoints"][:6]])
    assert len(batch) == 2 and all(set(item) == {"translation_text"} for item in batch)


def test_save_for_hub_refuses_a_non_pipeline_and_verify_names_a_missing_pipeline_file(sign2text, tmp_path, monkeypatch):
    model, processor = sign2text
    folder = save_for_hub(model, processor, tmp_path / "sign2text")
    (folder / "pipeline_sign2text.py").unlink()
    with pytest.raises(FileNotFoundError, match=r"pipeline_sign2text.py \(code\)"):
        verify_checkpoint(folder)
    reloaded = Sign2TextModel.from_pretrained(folder)
    assert "sign-language-translation" in reloaded.config.custom_pipelines  # what a re-save starts from
    monkeypatch.setattr(Sign2TextModel, "hub_pipelines", {})
    resaved = save_for_hub(reloaded, processor, tmp_path / "resaved")
    assert "custom_pipelines" not in json.loads((resaved / "config.json").read_text())  # no stale registration
    monkeypatch.setattr(Sign2TextModel, "hub_pipelines", {"sign-language-translation": Sign2TextProcessor})
    with pytest.raises(TypeError, match="map each task to a Pipeline subclass"):
        save_for_hub(model, processor, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_cards_carry_the_pipeline_tag_and_the_pipeline_call():
    card = build_model_card(
        model_id="me/sign2text", title="t", summary="s", body_markdown="", results={"WER": 1.0}, task_type="translation",
        task_name="Sign language translation", dataset_name="d", dataset_type="d", tags=[],
        **pipeline_card_fields(Sign2TextPipeline, "me/sign2text"),
    )
    assert "pipeline_tag: translation" in card
    assert 'pipeline("sign-language-translation", model="me/sign2text", trust_remote_code=True)' in card
    assert "pipeline_tag" not in build_model_card(
        model_id="m", title="t", summary="s", body_markdown="", results={"R@1": 1.0}, task_type="x", task_name="x",
        dataset_name="d", dataset_type="d", tags=[],
    )


def test_captioning_and_chain_of_thought_pipelines_check_their_inputs(models):
    captioner = RagCaptioningPipeline(model=models["rag"][0], processor=models["rag"][1], device=-1)
    assert set(captioner([IMAGE])[0]) == {"generated_text"}
    with pytest.raises(ValueError, match="writes without a prompt"):
        captioner(IMAGE, text="Describe this picture")
    with pytest.raises(ValueError, match="Image 0 holds 12 NaN values"):
        captioner(np.full((2, 2, 3), np.nan, np.float32))
    solver = MMCoTPipeline(model=models["mmcot"][0], processor=models["mmcot"][1], device=-1)
    with pytest.raises(ValueError, match="A problem is a dict with 'question', 'choices'"):
        solver({"question": "Why?"})
