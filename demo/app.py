"""The demo page: one Gradio app with a tab per model, loading saved folders or Hub ids, with embedded examples.

    pip install -e ".[demo]" && python demo/app.py
    python demo/app.py --vlp your-name/vlp-dual-encoder --sign2text outputs/sign2text/final --port 7860

Each model loads through `AutoModel` / `AutoProcessor` with `trust_remote_code=True`, as a Hub user loads it, and is
run by the pipeline classes that ship with it. Without arguments the app takes the default runs' `final/` folders;
a tab whose model is missing says which command trains it. The examples (shapes, sign clips, science questions) are
generated from fixed seeds by the project's data modules, so the page works offline.
"""

import argparse
import functools
import io
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage reports

import gradio as gr  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoModel, AutoProcessor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python demo/app.py` from a source checkout

from data.synthetic_scienceqa import make_scienceqa_problems  # noqa: E402
from data.synthetic_shapes import make_shapes_dataset  # noqa: E402
from data.synthetic_signs import make_signs_dataset  # noqa: E402
from processing.pipeline_mmcot import MMCoTPipeline  # noqa: E402
from processing.pipeline_rag_captioner import RagCaptioningPipeline  # noqa: E402
from processing.pipeline_sign2text import Sign2TextPipeline  # noqa: E402
from processing.processing_pose import load_clip  # noqa: E402

MODELS = {  # name: (default folder, the command that writes it, tab title)
    "vlp": ("outputs/vlp-images/final", "accelerate launch train/vlp.py", "Image ↔ text retrieval"),
    "rag": ("outputs/rag-captioner/final", "accelerate launch train/rag_captioner.py", "Captioning"),
    "sign2text": ("outputs/sign2text/final", "accelerate launch train/sign2text.py", "Sign clip → text"),
    "mmcot": ("outputs/mmcot/final", "accelerate launch train/mmcot.py", "Science question → answer"),
}
NUM_EXAMPLES = 6
GALLERY_SIZE = 24
DISPLAY_SIZE = 96  # pixels of the embedded example pictures; the processors resize them for the model
THEME = gr.themes.Default(font=["sans-serif"], font_mono=["monospace"])  # system fonts: nothing fetched


def load_model(name_or_path: str):
    """`(model, processor)` of a saved folder or Hub id, through the auto classes and the code shipped with it."""
    model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True).eval()
    return model, AutoProcessor.from_pretrained(name_or_path, trust_remote_code=True)


def user_errors(handler):
    """Show a bad input's message on the page (the processors' errors say what to fix) instead of a bare "Error"."""

    @functools.wraps(handler)
    def wrapped(*args):
        try:
            return handler(*args)
        except (ValueError, TypeError, FileNotFoundError) as error:
            raise gr.Error(str(error)) from error

    return wrapped


def shapes_examples(count: int, seed: int):
    return make_shapes_dataset(count, seed=seed, image_size=DISPLAY_SIZE, captions_per_image=5)


def example_names(count: int) -> list[str]:
    return [f"Example {index + 1}" for index in range(count)]


# ----------------------------------------------------------------------------------------------------- VLP


class RetrievalTab:
    """Text → the best-matching pictures of an embedded gallery, and image → the best-matching captions of it."""

    def __init__(self, model, processor):
        if model.config.vision_config is None:
            raise ValueError("This VLP model has no image tower (it was trained on sign clips); pass an image model.")
        self.model, self.processor = model, processor
        gallery = shapes_examples(GALLERY_SIZE, seed=101)
        self.images = list(gallery["image"])
        self.captions = [caption for captions in gallery["captions"] for caption in captions]
        with torch.no_grad():
            self.image_embeds = self._normalised(model.get_visual_features(**processor(images=self.images)))
            self.caption_embeds = self._normalised(model.get_text_features(**processor(text=self.captions)))
        self.examples = shapes_examples(NUM_EXAMPLES, seed=202)

    @staticmethod
    def _normalised(features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @user_errors
    def images_for_text(self, text: str, k: int = 4):
        with torch.no_grad():
            query = self._normalised(self.model.get_text_features(**self.processor(text=[text])))[0]
        scores = self.image_embeds @ query
        return [(self.images[i], f"{scores[i]:.2f}") for i in scores.argsort(descending=True)[:k].tolist()]

    @user_errors
    def captions_for_image(self, image, k: int = 5):
        if image is None:
            raise ValueError("Upload an image or pick an example first.")
        with torch.no_grad():
            query = self._normalised(self.model.get_visual_features(**self.processor(images=[image])))[0]
        scores = self.caption_embeds @ query
        return [[self.captions[i], round(float(scores[i]), 3)] for i in scores.argsort(descending=True)[:k].tolist()]

    def build(self) -> None:
        gr.Markdown(f"Searches {GALLERY_SIZE} embedded pictures and their {len(self.captions)} captions.")
        with gr.Row():
            with gr.Column():
                query = gr.Textbox(label="Describe a picture", value="a red circle in the middle", elem_id="retrieval-query")
                search = gr.Button("Find pictures", elem_id="retrieval-search")
                gallery = gr.Gallery(label="Best matches (cosine)", columns=4, height="auto", elem_id="retrieval-gallery")
            with gr.Column():
                pick = gr.Radio(example_names(NUM_EXAMPLES), label="Embedded examples", elem_id="retrieval-examples")
                image = gr.Image(type="pil", format="png", label="Picture", height=160, elem_id="retrieval-image")
                describe = gr.Button("Find captions", elem_id="retrieval-describe")
                captions = gr.Dataframe(headers=["caption", "cosine"], label="Best captions", elem_id="retrieval-captions")
        search.click(self.images_for_text, query, gallery)
        pick.change(lambda name: self.examples[example_names(NUM_EXAMPLES).index(name)]["image"], pick, image)
        describe.click(self.captions_for_image, image, captions)


# ----------------------------------------------------------------------------------------------------- RAG


class CaptioningTab:
    """An image → its caption, with the datastore captions the decoder was given beside it."""

    def __init__(self, model, processor):
        self.pipeline = RagCaptioningPipeline(model=model, processor=processor)
        self.examples = shapes_examples(NUM_EXAMPLES, seed=303)

    @user_errors
    def caption(self, image):
        if image is None:
            raise ValueError("Upload an image or pick an example first.")
        result = self.pipeline(image, return_neighbours=True)
        return result["generated_text"], [[n["caption"], round(n["score"], 3)] for n in result["retrieved_captions"]]

    def build(self) -> None:
        with gr.Row():
            with gr.Column():
                pick = gr.Radio(example_names(NUM_EXAMPLES), label="Embedded examples", elem_id="caption-examples")
                image = gr.Image(type="pil", format="png", label="Picture", height=200, elem_id="caption-image")
                run = gr.Button("Caption it", elem_id="caption-run")
            with gr.Column():
                caption = gr.Textbox(label="Caption", elem_id="caption-text")
                neighbours = gr.Dataframe(headers=["retrieved caption", "score"], label="Retrieved captions", elem_id="caption-neighbours")
        pick.change(lambda name: self.examples[example_names(NUM_EXAMPLES).index(name)]["image"], pick, image)
        run.click(self.caption, image, [caption, neighbours])


# ----------------------------------------------------------------------------------------------------- Sign2Text


def draw_pose(keypoints: np.ndarray, panels: int = 4) -> Image.Image:
    """A clip's keypoints (x, y, coloured by keypoint index) at `panels` moments spread over the clip, on the clip's
    own extent so the motion shows. Points only: a clip's file does not say which keypoints are joined."""
    frames = np.linspace(0, len(keypoints) - 1, panels).round().astype(int)
    figure, axes = plt.subplots(1, panels, figsize=(2.2 * panels, 2.4))
    valid = keypoints[~np.isnan(keypoints).any(axis=-1)]
    low, high = valid[:, :2].min(axis=0), valid[:, :2].max(axis=0)
    for axis, frame in zip(axes, frames):
        points = keypoints[frame]
        axis.scatter(points[:, 0], points[:, 1], c=np.arange(len(points)), cmap="viridis", s=14)
        axis.set(xlim=(low[0], high[0]), ylim=(high[1], low[1]), xticks=[], yticks=[], title=f"frame {frame}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return Image.open(buffer).convert("RGB")


class SignTab:
    """A sign clip (embedded example or an uploaded .npy / .npz) → its sentence, with the pose drawn."""

    def __init__(self, model, processor):
        self.pipeline = Sign2TextPipeline(model=model, processor=processor)
        config = model.config.sequence_config
        self.streams = (config.use_keypoints, config.use_visual_features)
        self.examples = make_signs_dataset(
            NUM_EXAMPLES, seed=404, num_keypoints=config.num_keypoints, keypoint_dim=config.keypoint_dim,
            feature_dim=config.feature_dim if config.use_visual_features else None,
        ).with_format("numpy")

    def _example_clip(self, index: int) -> dict:
        example = self.examples[index]
        return {"keypoints": example["keypoints"], "frame_features": example.get("features")}

    @user_errors
    def translate(self, name: str | None, upload: str | None):
        if upload:
            clip, reference = load_clip(upload, *self.streams), ""
        elif name:
            index = example_names(NUM_EXAMPLES).index(name)
            clip, reference = self._example_clip(index), str(self.examples[index]["sentence"])
        else:
            raise ValueError("Pick an embedded example or upload a .npy (keypoints) or .npz clip first.")
        text = self.pipeline({key: value for key, value in clip.items() if value is not None})["translation_text"]
        pose = draw_pose(clip["keypoints"]) if clip.get("keypoints") is not None else None
        return text, reference, pose

    def build(self) -> None:
        with gr.Row():
            with gr.Column():
                pick = gr.Radio(example_names(NUM_EXAMPLES), label="Embedded examples (signers unseen in training)", elem_id="sign-examples")
                upload = gr.File(label="…or a clip: .npy keypoints (frames, keypoints, dims) or .npz with keypoints, frame_features", file_types=[".npy", ".npz"], type="filepath", elem_id="sign-upload")
                run = gr.Button("Translate", elem_id="sign-run")
            with gr.Column():
                text = gr.Textbox(label="Translation", elem_id="sign-text")
                reference = gr.Textbox(label="Reference sentence (embedded examples)", elem_id="sign-reference")
        pose = gr.Image(label="Pose", type="pil", elem_id="sign-pose")
        run.click(self.translate, [pick, upload], [text, reference, pose])


# ----------------------------------------------------------------------------------------------------- MMCoT


class ScienceTab:
    """A ScienceQA-style problem (question, options, context, image) → rationale → answer."""

    def __init__(self, model, processor):
        self.pipeline = MMCoTPipeline(model=model, processor=processor)
        vision = model.config.vision_config
        problems, _, images = make_scienceqa_problems({"test": NUM_EXAMPLES}, seed=505, image_size=getattr(vision, "image_size", 48))
        self.examples = [{**problem, "image": images.get(pid)} for pid, problem in problems.items()]

    def fill(self, name: str):
        problem = self.examples[example_names(NUM_EXAMPLES).index(name)]
        return problem["question"], "\n".join(problem["choices"]), problem.get("hint") or "", problem["image"]

    @user_errors
    def solve(self, question: str, options: str, context: str, image):
        choices = [line.strip() for line in options.splitlines() if line.strip()]
        result = self.pipeline({"question": question, "choices": choices, "hint": context, "image": image})
        answer = result["answer_text"] if result["letter"] is None else f"({result['letter']}) {result['choice']}"
        return result["rationale"], answer

    def build(self) -> None:
        with gr.Row():
            with gr.Column():
                pick = gr.Radio(example_names(NUM_EXAMPLES), label="Embedded examples", elem_id="science-examples")
                question = gr.Textbox(label="Question", elem_id="science-question")
                options = gr.Textbox(label="Options, one per line", lines=3, elem_id="science-options")
                context = gr.Textbox(label="Context", elem_id="science-context")
                image = gr.Image(type="pil", format="png", label="Picture (optional)", height=140, elem_id="science-image")
                run = gr.Button("Solve", elem_id="science-run")
            with gr.Column():
                rationale = gr.Textbox(label="Rationale", lines=4, elem_id="science-rationale")
                answer = gr.Textbox(label="Answer", elem_id="science-answer")
        pick.change(self.fill, pick, [question, options, context, image])
        run.click(self.solve, [question, options, context, image], [rationale, answer])


TABS = {"vlp": RetrievalTab, "rag": CaptioningTab, "sign2text": SignTab, "mmcot": ScienceTab}


def build_demo(sources: dict[str, str | None]) -> gr.Blocks:
    """The page; `sources` maps a model name to a folder or Hub id, `None` for a tab without a model."""
    with gr.Blocks(title="hf-multimodal-models demo") as demo:
        gr.Markdown("# hf-multimodal-models\nEvery model below is loaded from its saved folder or Hub repository.")
        for name, (default, command, title) in MODELS.items():
            with gr.Tab(title, elem_id=f"tab-{name}"):
                if sources.get(name) is None:
                    gr.Markdown(f"No model loaded. Train one with `{command}` (writes `{default}`) or pass `--{name} FOLDER_OR_HUB_ID`.")
                    continue
                gr.Markdown(f"Model: `{sources[name]}`")
                try:
                    tab = TABS[name](*load_model(sources[name]))
                except ValueError as error:  # a model of the wrong kind for this tab, e.g. a sign-clip VLP
                    gr.Markdown(f"This model cannot serve this tab: {error}")
                    continue
                tab.build()
    return demo


def resolve_sources(args: argparse.Namespace) -> dict[str, str | None]:
    """The given folder or Hub id of each model; the default folder when it exists; else `None`."""
    sources = {}
    for name, (default, _, _) in MODELS.items():
        given = getattr(args, name)
        sources[name] = given if given is not None else (default if Path(default, "config.json").is_file() else None)
    return sources


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, (default, _, title) in MODELS.items():
        parser.add_argument(f"--{name}", help=f"{title}: a saved folder or Hub id (default: {default} if it exists).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on (0.0.0.0 to share on the network).")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    build_demo(resolve_sources(args)).launch(server_name=args.host, server_port=args.port, theme=THEME)


if __name__ == "__main__":
    main()
