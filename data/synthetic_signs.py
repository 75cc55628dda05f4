"""Seeded sign-language-like data: keypoint sequences (plus frame features) paired with sentences.

Real sign corpora cannot be downloaded here, so Sign2Text is exercised on a small invented language whose
structure mirrors the real task: every word is a fixed motion of a hand skeleton (the same for all seeds, like
a lexicon), a sentence is its words' motions joined by short transitions, and signers differ in tempo, body
scale and position, hand shape and noise, so a model must recognise motions rather than memorise sequences.
A finite pool of grammatical sentences makes every sentence recur with several signers, which supervised
contrastive objectives need as positives. Frame features mimic a frozen visual backbone: a fixed linear view of
the keypoints plus a word-identity signal plus noise, i.e. information the keypoints alone do not carry.
"""

import itertools
import zlib
from dataclasses import dataclass
from functools import cache

import numpy as np
from datasets import Array2D, Array3D, Dataset, DatasetDict, Features, Value

WORD_CLASSES = {
    "SUBJECT": ("i", "you", "we", "they"),
    "TIME": ("now", "today", "tomorrow"),
    "ACTION": ("eat", "drink", "sleep", "work", "play"),
    "PLACE": ("school", "hospital", "shop", "park"),
    "PERSON": ("doctor", "teacher", "friend", "mother"),
    "THING": ("water", "food", "book"),
    "STATE": ("tired", "happy", "sick"),
}
SENTENCE_TEMPLATES = (
    "SUBJECT want to ACTION TIME",
    "where is the PLACE",
    "where is the PERSON",
    "SUBJECT go to the PLACE TIME",
    "the PERSON is STATE",
    "SUBJECT need THING TIME",
    "does the PERSON want to ACTION",
    "SUBJECT see the PERSON at the PLACE",
)
_POOL_ORDER_SEED = 20240611
_BACKBONE_SEED = 7

_HAND_SIZE = 0.08
_FINGERS = 5
_TRANSITION_FRAMES = 2
_WORD_FRAMES = (6, 10)
_NO_WORD = -1
_FEATURE_NOISE_STD = 0.5


def _sentence_pool() -> tuple[str, ...]:
    """Every sentence the grammar generates, in a fixed shuffled order so any prefix mixes all templates."""
    sentences = []
    for template in SENTENCE_TEMPLATES:
        slots = [WORD_CLASSES.get(token, (token,)) for token in template.split()]
        sentences.extend(" ".join(words) for words in itertools.product(*slots))
    order = np.random.default_rng(_POOL_ORDER_SEED).permutation(len(sentences))
    return tuple(sentences[index] for index in order)


SENTENCE_POOL = _sentence_pool()
VOCABULARY = tuple(sorted({word for sentence in SENTENCE_POOL for word in sentence.split()}))
_WORD_INDEX = {word: index for index, word in enumerate(VOCABULARY)}


def sign_sequence_features(num_keypoints: int, keypoint_dim: int, feature_dim: int | None) -> Features:
    """Schema shared by the synthetic signs and `load_keypoint_table`; `features` only when `feature_dim` is set."""
    columns = {
        "sample_id": Value("string"),
        "keypoints": Array3D(shape=(None, num_keypoints, keypoint_dim), dtype="float32"),
    }
    if feature_dim is not None:
        columns["features"] = Array2D(shape=(None, feature_dim), dtype="float32")
    columns |= {"sentence": Value("string"), "sentence_id": Value("int64"), "signer_id": Value("int64")}
    return Features(columns)


@cache
def _word_motion(word: str) -> np.ndarray:
    """Per-frame pose parameters (x, y, z shift, roll, openness, spread) of a word; seeded by the word itself."""
    rng = np.random.default_rng(zlib.crc32(word.encode()))
    num_frames = int(rng.integers(_WORD_FRAMES[0], _WORD_FRAMES[1] + 1))
    t = np.linspace(0.0, 1.0, num_frames)[:, None]
    start, control, end = rng.uniform(-0.15, 0.15, size=(3, 3))
    shift = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    roll_start, roll_end = rng.uniform(-np.pi / 3, np.pi / 3, size=2)
    wiggle = rng.uniform(0.0, 0.3) * np.sin(2 * np.pi * rng.integers(1, 4) * t)
    roll = roll_start + (roll_end - roll_start) * t + wiggle
    openness = np.interp(t, [0.0, 1.0], rng.uniform(0.3, 1.2, size=2))
    spread = np.interp(t, [0.0, 1.0], rng.uniform(0.5, 1.5, size=2))
    motion = np.concatenate([shift, roll, openness, spread], axis=1)
    motion.flags.writeable = False
    return motion


@cache
def _feature_projection(num_keypoints: int, keypoint_dim: int, feature_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed keypoint→feature map and word embeddings: the frozen 'visual backbone', the same for every seed.

    The map is scaled so that the hand-sized keypoint deviations of a frame give features of unit scale.
    """
    rng = np.random.default_rng(_BACKBONE_SEED)
    inputs = num_keypoints * keypoint_dim
    projection = rng.standard_normal((inputs, feature_dim)) / (np.sqrt(inputs) * _HAND_SIZE)
    word_embeddings = rng.standard_normal((len(VOCABULARY), feature_dim))
    return projection, word_embeddings


@dataclass(frozen=True)
class _SignerStyle:
    """How one signer departs from the lexicon; `tempo` above 1 signs faster, i.e. with fewer frames."""

    tempo: float
    scale: float
    offset: np.ndarray
    amplitude: float
    roll_bias: float
    noise_std: float
    angle_jitter: np.ndarray
    radius_jitter: np.ndarray

    @classmethod
    def sample(cls, seed: int, signer_id: int, num_keypoints: int) -> "_SignerStyle":
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, signer_id)))
        return cls(
            tempo=rng.uniform(0.7, 1.4),
            scale=rng.uniform(0.8, 1.25),
            offset=rng.uniform(-0.05, 0.05, size=3),
            amplitude=rng.uniform(0.8, 1.2),
            roll_bias=rng.uniform(-0.2, 0.2),
            noise_std=rng.uniform(0.002, 0.006),
            angle_jitter=rng.normal(0.0, 0.05, size=num_keypoints),
            radius_jitter=1.0 + rng.normal(0.0, 0.05, size=num_keypoints),
        )


@cache
def _hand_layout(num_keypoints: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rest angle, rest radius and joint depth (0 at the wrist, 1 at fingertips) of a wrist-plus-fingers skeleton.

    Keypoint 0 is the wrist; the others are spread round-robin over five fingers, one joint further out per round,
    which is the MediaPipe hand layout when `num_keypoints` is 21.
    """
    index = np.arange(num_keypoints)
    finger = (index - 1) % _FINGERS
    joint = (index + _FINGERS - 1) // _FINGERS
    angle = np.pi / 2 + np.linspace(-0.9, 0.9, _FINGERS)[finger]
    depth = joint / max(joint.max(), 1)
    return angle, 0.25 * joint, depth


@cache
def _sentence_motion(sentence: str) -> tuple[np.ndarray, np.ndarray]:
    """Word motions joined by interpolated transitions; returns the parameters and each frame's word index."""
    pieces, labels = [], []
    for position, word in enumerate(sentence.split()):
        motion = _word_motion(word)
        if position > 0:
            weights = np.arange(1, _TRANSITION_FRAMES + 1)[:, None] / (_TRANSITION_FRAMES + 1)
            pieces.append((1 - weights) * pieces[-1][-1] + weights * motion[0])
            labels.append(np.full(_TRANSITION_FRAMES, _NO_WORD))
        pieces.append(motion)
        labels.append(np.full(len(motion), _WORD_INDEX[word]))
    parameters, frame_words = np.concatenate(pieces), np.concatenate(labels)
    parameters.flags.writeable = frame_words.flags.writeable = False
    return parameters, frame_words


def _resample(parameters: np.ndarray, labels: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear time-stretch of the pose parameters; labels follow the nearest source frame."""
    source = np.linspace(0.0, len(parameters) - 1, num_frames)
    lower = np.floor(source).astype(int)
    upper = np.minimum(lower + 1, len(parameters) - 1)
    weight = (source - lower)[:, None]
    stretched = (1 - weight) * parameters[lower] + weight * parameters[upper]
    return stretched, labels[np.rint(source).astype(int)]


def _render_keypoints(
    parameters: np.ndarray, style: _SignerStyle, keypoint_dim: int, rng: np.random.Generator
) -> np.ndarray:
    """Pose the hand skeleton frame by frame in the signer's style, place it on the body and add sensor noise."""
    num_keypoints = len(style.angle_jitter)
    rest_angle, rest_radius, depth = _hand_layout(num_keypoints)
    shift, roll, openness, spread = parameters[:, :3], parameters[:, 3:4], parameters[:, 4:5], parameters[:, 5:6]
    angle = np.pi / 2 + (rest_angle + style.angle_jitter - np.pi / 2) * spread + roll + style.roll_bias
    radius = rest_radius * style.radius_jitter * (1 - (1 - openness) * depth)
    hand = np.stack([radius * np.cos(angle), radius * np.sin(angle), 0.3 * (1 - openness) * depth], axis=-1)
    body = 0.5 + style.offset + style.scale * (_HAND_SIZE * hand + style.amplitude * shift[:, None, :])
    keypoints = body[..., :keypoint_dim]
    return (keypoints + rng.normal(0.0, style.noise_std, size=keypoints.shape)).astype(np.float32)


def _frame_features(
    keypoints: np.ndarray, labels: np.ndarray, feature_dim: int, rng: np.random.Generator
) -> np.ndarray:
    """Backbone-like features: a fixed linear view of the keypoints, plus the current word's embedding, plus noise."""
    num_frames, num_keypoints, keypoint_dim = keypoints.shape
    projection, word_embeddings = _feature_projection(num_keypoints, keypoint_dim, feature_dim)
    visual = (keypoints.reshape(num_frames, -1) - 0.5) @ projection
    identity = np.where((labels == _NO_WORD)[:, None], 0.0, word_embeddings[labels])
    return (visual + identity + rng.normal(0.0, _FEATURE_NOISE_STD, size=visual.shape)).astype(np.float32)


def _generate(
    num_samples: int,
    rng: np.random.Generator,
    seed: int,
    *,
    signer_ids: list[int],
    first_index: int,
    num_keypoints: int,
    keypoint_dim: int,
    feature_dim: int | None,
    num_sentences: int,
) -> Dataset:
    if num_samples < 0:
        raise ValueError(f"num_samples must be non-negative, got {num_samples}.")
    if num_keypoints < 1:
        raise ValueError(f"num_keypoints must be positive, got {num_keypoints}.")
    if keypoint_dim not in (2, 3):
        raise ValueError(f"keypoint_dim must be 2 (x, y) or 3 (x, y, z), got {keypoint_dim}.")
    if feature_dim is not None and feature_dim < 1:
        raise ValueError(f"feature_dim must be positive or None (no features column), got {feature_dim}.")
    if not 1 <= num_sentences <= len(SENTENCE_POOL):
        raise ValueError(f"num_sentences must be between 1 and {len(SENTENCE_POOL)}, got {num_sentences}.")
    if not signer_ids:
        raise ValueError("num_signers must be at least 1.")
    styles = {signer_id: _SignerStyle.sample(seed, signer_id, num_keypoints) for signer_id in signer_ids}
    columns = {name: [] for name in sign_sequence_features(num_keypoints, keypoint_dim, feature_dim)}
    for index in range(first_index, first_index + num_samples):
        sentence_id = int(rng.integers(num_sentences))
        signer_id = signer_ids[int(rng.integers(len(signer_ids)))]
        style = styles[signer_id]
        parameters, labels = _sentence_motion(SENTENCE_POOL[sentence_id])
        tempo = style.tempo * rng.uniform(0.9, 1.1)
        parameters, labels = _resample(parameters, labels, max(2, round(len(parameters) / tempo)))
        keypoints = _render_keypoints(parameters, style, keypoint_dim, rng)
        columns["sample_id"].append(f"signs-{seed}-{index:06d}")
        columns["keypoints"].append(keypoints)
        if feature_dim is not None:
            columns["features"].append(_frame_features(keypoints, labels, feature_dim, rng))
        columns["sentence"].append(SENTENCE_POOL[sentence_id])
        columns["sentence_id"].append(sentence_id)
        columns["signer_id"].append(signer_id)
    return Dataset.from_dict(columns, features=sign_sequence_features(num_keypoints, keypoint_dim, feature_dim))


def make_signs_dataset(
    num_samples: int,
    seed: int = 0,
    num_keypoints: int = 21,
    keypoint_dim: int = 2,
    feature_dim: int | None = 32,
    num_signers: int = 8,
    num_sentences: int = len(SENTENCE_POOL),
) -> Dataset:
    """Signed sentences drawn uniformly from the first `num_sentences` of `SENTENCE_POOL` by signers `0..num_signers-1`.

    `sentence_id` is the sentence's index in `SENTENCE_POOL`, so it agrees across seeds and splits. Word motions and
    the feature map are fixed; the seed drives signer styles, sentence/signer draws, tempo jitter and noise.
    """
    return _generate(
        num_samples,
        np.random.default_rng(seed),
        seed,
        signer_ids=list(range(num_signers)),
        first_index=0,
        num_keypoints=num_keypoints,
        keypoint_dim=keypoint_dim,
        feature_dim=feature_dim,
        num_sentences=num_sentences,
    )


def make_signs_splits(
    num_train: int,
    num_eval: int,
    seed: int = 0,
    num_eval_signers: int = 2,
    num_keypoints: int = 21,
    keypoint_dim: int = 2,
    feature_dim: int | None = 32,
    num_signers: int = 8,
    num_sentences: int = len(SENTENCE_POOL),
) -> DatasetDict:
    """Signer-independent splits: `validation` is signed by `num_eval_signers` signers unseen in `train`.

    `train` equals `make_signs_dataset(num_train, seed, ...)`. Validation samples come from a disjoint RNG stream,
    its signer ids follow the training ones and its sample ids continue after the training ones.
    """
    if num_eval_signers < 1:
        raise ValueError(f"num_eval_signers must be at least 1, got {num_eval_signers}.")
    eval_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    eval_signers = list(range(num_signers, num_signers + num_eval_signers))
    options = {
        "num_keypoints": num_keypoints,
        "keypoint_dim": keypoint_dim,
        "feature_dim": feature_dim,
        "num_sentences": num_sentences,
    }
    return DatasetDict(
        train=make_signs_dataset(num_train, seed, num_signers=num_signers, **options),
        validation=_generate(num_eval, eval_rng, seed, signer_ids=eval_signers, first_index=num_train, **options),
    )
