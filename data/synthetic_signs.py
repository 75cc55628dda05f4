"""Seeded sign-language-like data: continuous keypoint sequences (plus frame features) paired with sentences.

Real sign corpora cannot be downloaded here, so Sign2Text is exercised on an invented language built to be hard in
the ways real signing is hard:

- **Continuous signing.** Every word is a fixed motion of a hand skeleton (position, roll, finger spread and five
  finger curls; the same for all seeds, like a lexicon), but a sentence is not a row of isolated signs: each sign
  starts where the previous one pulled it (co-articulation, as strong as the signer's style), the hands travel
  between signs with eased transitions, hand shapes morph, and the tempo changes from word to word and across the
  sentence.
- **Compositional sentences.** A grammar of 17 templates (statements, questions, negation, time and place phrases)
  over 99 words gives sentences of 4–9 signs; `SENTENCE_POOL` is a fixed, seeded sample of it. Its last
  `NUM_HELD_OUT_SENTENCES` sentences are never drawn for training: every one of their words occurs in training
  sentences in other combinations (checked at import), so they test translation, not recall.
- **Signers that differ.** A style sets handedness (left-handers mirror the signing), signing-space offset and tilt,
  amplitude, tempo and its drift across a sentence, co-articulation strength, hand-shape deformation and curl bias,
  sensor jitter, and how the person looks to the visual backbone. Held-out signers draw every one of these from a
  wider distribution than training signers.
- **Imperfect capture.** Frames drop out at random (the clip simply lacks them), and with `occlusion_rate` a span of
  frames loses some fingers or the whole hand (NaN keypoints, as a detector reports them).

Frame features mimic a frozen visual backbone: a fixed linear view of the (unoccluded) pose, a weak word signal
blurred over time so that neighbouring signs bleed into each other, the signer's appearance, and strong noise.
"""

import itertools
import zlib
from dataclasses import dataclass
from functools import cache

import numpy as np
from datasets import Array2D, Array3D, Dataset, DatasetDict, Features, Value

WORD_CLASSES = {
    "SUBJECT": ("i", "you", "we", "they", "he", "she"),
    "PERSON": ("doctor", "teacher", "friend", "mother", "father", "brother", "sister", "nurse", "police", "boss", "child", "neighbour"),
    "PLACE": ("school", "hospital", "shop", "park", "home", "office", "station", "library", "bank", "church", "market", "beach"),
    "THING": ("water", "food", "book", "medicine", "key", "money", "phone", "car", "bread", "coffee", "ticket", "letter"),
    "ACTION": ("eat", "drink", "sleep", "work", "play", "read", "swim", "cook", "study", "rest", "dance", "travel"),
    "GET": ("buy", "find", "need", "bring", "lose", "sell"),
    "MEET": ("see", "visit", "help", "call", "meet", "ask"),
    "STATE": ("tired", "happy", "sick", "hungry", "angry", "busy", "cold", "late", "sad"),
    "TIME": ("now", "today", "tomorrow", "yesterday", "tonight", "next week", "last week", "every day", "this morning"),
}  # fmt: skip
SENTENCE_TEMPLATES = (
    "SUBJECT want to ACTION TIME",
    "SUBJECT do not want to ACTION TIME",
    "SUBJECT GET the THING TIME",
    "SUBJECT do not GET the THING",
    "SUBJECT GET the THING at the PLACE",
    "SUBJECT go to the PLACE TIME",
    "SUBJECT do not go to the PLACE TIME",
    "SUBJECT MEET the PERSON at the PLACE",
    "SUBJECT MEET my PERSON TIME",
    "my PERSON is STATE TIME",
    "my PERSON is not STATE",
    "where is the PERSON",
    "where is my THING",
    "does the PERSON want to ACTION TIME",
    "the PERSON ACTION at the PLACE TIME",
    "SUBJECT ACTION with my PERSON",
    "TIME SUBJECT ACTION at the PLACE",
)
SENTENCES_PER_TEMPLATE = 120
NUM_HELD_OUT_SENTENCES = 200
_POOL_ORDER_SEED = 20240611
_BACKBONE_SEED = 7

_HAND_SIZE = 0.08
_FINGERS = 5
_WORD_FRAMES = (6, 10)
_NO_WORD = -1
_PARAMETERS = 5 + _FINGERS  # x, y, z shift, roll, spread, one curl per finger
_WORD_TEMPO_JITTER = 0.15  # log-normal sigma of each word's own tempo
_DROP_FRAME_PROBABILITY = 0.03
_FEATURE_WORD_SCALE = 1.0
_FEATURE_BLUR_FRAMES = 1.5
_FEATURE_NOISE_STD = 0.8
_UNSEEN_SIGNER_BREADTH = 1.6  # held-out signers' style ranges are this much wider around the same centres


def _sentence_pool() -> tuple[str, ...]:
    """`SENTENCES_PER_TEMPLATE` seeded sentences per template (all, for smaller ones), in a fixed shuffled order so
    any prefix mixes all templates."""
    rng = np.random.default_rng(_POOL_ORDER_SEED)
    sentences = []
    for template in SENTENCE_TEMPLATES:
        slots = [WORD_CLASSES.get(token, (token,)) for token in template.split()]
        expansions = [" ".join(words) for words in itertools.product(*slots)]
        chosen = rng.permutation(len(expansions))[:SENTENCES_PER_TEMPLATE]
        sentences.extend(expansions[index] for index in sorted(chosen))
    order = rng.permutation(len(sentences))
    return tuple(sentences[index] for index in order)


SENTENCE_POOL = _sentence_pool()
NUM_TRAIN_SENTENCES = len(SENTENCE_POOL) - NUM_HELD_OUT_SENTENCES
"""Training clips draw from `SENTENCE_POOL[:NUM_TRAIN_SENTENCES]`; the rest make the unseen-sentence split."""
VOCABULARY = tuple(sorted({word for sentence in SENTENCE_POOL for word in sentence.split()}))
_WORD_INDEX = {word: index for index, word in enumerate(VOCABULARY)}


def _check_held_out_words() -> None:
    train_words = {word for sentence in SENTENCE_POOL[:NUM_TRAIN_SENTENCES] for word in sentence.split()}
    unseen = {word for sentence in SENTENCE_POOL[NUM_TRAIN_SENTENCES:] for word in sentence.split()} - train_words
    if unseen:
        raise RuntimeError(f"Held-out sentences use words no training sentence has: {sorted(unseen)}.")


_check_held_out_words()


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
    """Per-frame pose parameters (x, y, z shift, roll, spread, five finger curls) of a word; seeded by the word."""
    rng = np.random.default_rng(zlib.crc32(word.encode()))
    num_frames = int(rng.integers(_WORD_FRAMES[0], _WORD_FRAMES[1] + 1))
    t = np.linspace(0.0, 1.0, num_frames)[:, None]
    start, control, end = rng.uniform(-0.15, 0.15, size=(3, 3))
    shift = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    roll_start, roll_end = rng.uniform(-np.pi / 3, np.pi / 3, size=2)
    wiggle = rng.uniform(0.0, 0.3) * np.sin(2 * np.pi * rng.integers(1, 4) * t)
    roll = roll_start + (roll_end - roll_start) * t + wiggle
    spread = np.interp(t, [0.0, 1.0], rng.uniform(0.5, 1.5, size=2))
    curl_start, curl_end = rng.uniform(0.2, 1.2, size=(2, _FINGERS))
    curls = (1 - t) * curl_start + t * curl_end
    motion = np.concatenate([shift, roll, spread, curls], axis=1)
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


def _spread_uniform(rng: np.random.Generator, low: float, high: float, breadth: float, size=None):
    """Uniform on `[low, high]` widened `breadth` times around its centre."""
    centre, half = (low + high) / 2, (high - low) / 2 * breadth
    return rng.uniform(centre - half, centre + half, size=size)


@dataclass(frozen=True)
class _SignerStyle:
    """How one signer departs from the lexicon; `tempo` above 1 signs faster, i.e. with fewer frames."""

    left_handed: bool
    tempo: float
    tempo_drift: float
    coarticulation: float
    scale: float
    offset: np.ndarray
    tilt: float
    amplitude: float
    roll_bias: float
    curl_bias: float
    noise_std: float
    angle_jitter: np.ndarray
    radius_jitter: np.ndarray
    appearance: np.ndarray

    @classmethod
    def sample(cls, seed: int, signer_id: int, num_keypoints: int, feature_dim: int, breadth: float) -> "_SignerStyle":
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, signer_id)))
        return cls(
            left_handed=bool(rng.random() < 0.25 * breadth),
            tempo=float(np.exp(_spread_uniform(rng, np.log(0.75), np.log(1.35), breadth))),
            tempo_drift=_spread_uniform(rng, -0.3, 0.3, breadth),
            coarticulation=float(np.clip(_spread_uniform(rng, 0.2, 0.6, breadth), 0.0, 0.95)),
            scale=_spread_uniform(rng, 0.8, 1.25, breadth),
            offset=_spread_uniform(rng, -0.05, 0.05, breadth, size=3),
            tilt=_spread_uniform(rng, -0.2, 0.2, breadth),
            amplitude=_spread_uniform(rng, 0.8, 1.2, breadth),
            roll_bias=_spread_uniform(rng, -0.2, 0.2, breadth),
            curl_bias=_spread_uniform(rng, -0.15, 0.15, breadth),
            noise_std=_spread_uniform(rng, 0.002, 0.006, breadth),
            angle_jitter=rng.normal(0.0, 0.05 * breadth, size=num_keypoints),
            radius_jitter=1.0 + rng.normal(0.0, 0.05 * breadth, size=num_keypoints),
            appearance=rng.normal(0.0, 1.0, size=feature_dim),
        )


@cache
def _hand_layout(num_keypoints: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rest angle, rest radius, joint depth (0 at the wrist, 1 at fingertips) and finger of each skeleton keypoint.

    Keypoint 0 is the wrist; the others are spread round-robin over five fingers, one joint further out per round,
    which is the MediaPipe hand layout when `num_keypoints` is 21.
    """
    index = np.arange(num_keypoints)
    finger = (index - 1) % _FINGERS
    joint = (index + _FINGERS - 1) // _FINGERS
    angle = np.pi / 2 + np.linspace(-0.9, 0.9, _FINGERS)[finger]
    depth = joint / max(joint.max(), 1)
    return angle, 0.25 * joint, depth, finger


def _stretch(parameters: np.ndarray, num_frames: int) -> np.ndarray:
    """Linear time-stretch of pose parameters to `num_frames` frames."""
    source = np.linspace(0.0, len(parameters) - 1, num_frames)
    lower = np.floor(source).astype(int)
    upper = np.minimum(lower + 1, len(parameters) - 1)
    weight = (source - lower)[:, None]
    return (1 - weight) * parameters[lower] + weight * parameters[upper]


def _continuous_motion(words: list[str], style: _SignerStyle, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Word motions signed continuously; returns the pose parameters and each frame's word index (-1: transition).

    Each word gets its own tempo (the signer's, drifting across the sentence, times a per-word jitter); it starts
    displaced towards where the previous sign ended, the displacement fading over the sign (co-articulation); an
    eased transition of 1–3 frames carries position and hand shape from one sign into the next.
    """
    pieces, labels = [], []
    for position, word in enumerate(words):
        progress = position / (len(words) - 1) - 0.5 if len(words) > 1 else 0.0
        tempo = style.tempo * (1 + style.tempo_drift * progress) * rng.lognormal(0.0, _WORD_TEMPO_JITTER)
        base = _word_motion(word)
        motion = _stretch(base, max(3, round(len(base) / tempo)))
        if pieces:
            previous_end = pieces[-1][-1]
            fade = np.exp(-np.arange(len(motion)) / (0.35 * len(motion)))[:, None]
            motion = motion + style.coarticulation * fade * (previous_end - motion[0])
            steps = int(rng.integers(1, 4))
            weights = np.arange(1, steps + 1)[:, None] / (steps + 1)
            eased = weights * weights * (3 - 2 * weights)
            pieces.append((1 - eased) * previous_end + eased * motion[0])
            labels.append(np.full(steps, _NO_WORD))
        pieces.append(motion)
        labels.append(np.full(len(motion), _WORD_INDEX[word]))
    return np.concatenate(pieces), np.concatenate(labels)


def _render_keypoints(parameters: np.ndarray, style: _SignerStyle, keypoint_dim: int) -> np.ndarray:
    """Pose the hand skeleton frame by frame in the signer's style and place it in the signer's signing space."""
    rest_angle, rest_radius, depth, finger = _hand_layout(len(style.angle_jitter))
    shift, roll, spread = parameters[:, :3], parameters[:, 3:4], parameters[:, 4:5]
    openness = np.clip(parameters[:, 5:][:, finger] + style.curl_bias, 0.0, 1.4)
    angle = np.pi / 2 + (rest_angle + style.angle_jitter - np.pi / 2) * spread + roll + style.roll_bias
    radius = rest_radius * style.radius_jitter * (1 - (1 - openness) * depth)
    hand = np.stack([radius * np.cos(angle), radius * np.sin(angle), 0.3 * (1 - openness) * depth], axis=-1)
    cos, sin = np.cos(style.tilt), np.sin(style.tilt)
    shift = np.stack([cos * shift[:, 0] - sin * shift[:, 1], sin * shift[:, 0] + cos * shift[:, 1], shift[:, 2]], axis=-1)
    pose = _HAND_SIZE * hand + style.amplitude * shift[:, None, :]
    if style.left_handed:
        pose = pose * np.array([-1.0, 1.0, 1.0])
    body = 0.5 + style.offset + style.scale * pose
    return body[..., :keypoint_dim]


def _frame_features(
    keypoints: np.ndarray, labels: np.ndarray, style: _SignerStyle, feature_dim: int, rng: np.random.Generator
) -> np.ndarray:
    """Backbone-like features: a linear view of the pose, a weak word signal blurred over neighbouring frames (so
    co-articulated signs bleed into each other), the signer's appearance, and strong noise."""
    num_frames, num_keypoints, keypoint_dim = keypoints.shape
    projection, word_embeddings = _feature_projection(num_keypoints, keypoint_dim, feature_dim)
    visual = (keypoints.reshape(num_frames, -1) - 0.5) @ projection
    word_signal = np.where((labels == _NO_WORD)[:, None], 0.0, word_embeddings[labels])
    offsets = np.arange(num_frames)
    blur = np.exp(-0.5 * ((offsets[:, None] - offsets[None, :]) / _FEATURE_BLUR_FRAMES) ** 2)
    word_signal = (blur / blur.sum(axis=1, keepdims=True)) @ word_signal
    noise = rng.normal(0.0, _FEATURE_NOISE_STD, size=visual.shape)
    return (visual + _FEATURE_WORD_SCALE * word_signal + style.appearance + noise).astype(np.float32)


def _occlude(keypoints: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One span of 3–10 frames where a detector loses one or two fingers, or (one time in three) the whole hand."""
    num_frames, num_keypoints = keypoints.shape[:2]
    length = min(int(rng.integers(3, 11)), num_frames - 1)
    if length < 1:
        return keypoints
    start = int(rng.integers(0, num_frames - length + 1))
    if rng.random() < 1 / 3:
        hidden = np.ones(num_keypoints, dtype=bool)
    else:
        finger = _hand_layout(num_keypoints)[3]
        hidden = np.isin(finger, rng.choice(_FINGERS, size=int(rng.integers(1, 3)), replace=False))
        hidden[0] = False
    occluded = keypoints.copy()
    occluded[start : start + length, hidden] = np.nan
    return occluded


@dataclass(frozen=True)
class _Options:
    num_keypoints: int
    keypoint_dim: int
    feature_dim: int | None
    occlusion_rate: float

    def check(self) -> None:
        if self.num_keypoints < 1:
            raise ValueError(f"num_keypoints must be positive, got {self.num_keypoints}.")
        if self.keypoint_dim not in (2, 3):
            raise ValueError(f"keypoint_dim must be 2 (x, y) or 3 (x, y, z), got {self.keypoint_dim}.")
        if self.feature_dim is not None and self.feature_dim < 1:
            raise ValueError(f"feature_dim must be positive or None (no features column), got {self.feature_dim}.")
        if not 0 <= self.occlusion_rate <= 1:
            raise ValueError(f"occlusion_rate must lie in [0, 1] (share of clips with an occluded span), got {self.occlusion_rate}.")


def _generate(
    num_samples: int,
    rng: np.random.Generator,
    seed: int,
    *,
    sentence_ids: np.ndarray,
    styles: dict[int, _SignerStyle],
    first_index: int,
    options: _Options,
) -> Dataset:
    """`num_samples` clips, each of a sentence drawn uniformly from `sentence_ids` by a signer drawn from `styles`."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be non-negative, got {num_samples}.")
    features = sign_sequence_features(options.num_keypoints, options.keypoint_dim, options.feature_dim)
    columns = {name: [] for name in features}
    signer_ids = sorted(styles)
    for index in range(first_index, first_index + num_samples):
        sentence_id = int(sentence_ids[rng.integers(len(sentence_ids))])
        signer_id = signer_ids[int(rng.integers(len(signer_ids)))]
        style, sentence = styles[signer_id], SENTENCE_POOL[sentence_id]
        parameters, labels = _continuous_motion(sentence.split(), style, rng)
        clean = _render_keypoints(parameters, style, options.keypoint_dim)
        kept = rng.random(len(clean)) >= _DROP_FRAME_PROBABILITY
        kept[[0, -1]] = True  # a clip keeps its first and last frame, so its extent is known
        clean, labels = clean[kept], labels[kept]
        keypoints = clean + rng.normal(0.0, style.noise_std, size=clean.shape)
        if options.occlusion_rate and rng.random() < options.occlusion_rate:
            keypoints = _occlude(keypoints, rng)
        columns["sample_id"].append(f"signs-{seed}-{index:06d}")
        columns["keypoints"].append(keypoints.astype(np.float32))
        if options.feature_dim is not None:
            columns["features"].append(_frame_features(clean, labels, style, options.feature_dim, rng))
        columns["sentence"].append(sentence)
        columns["sentence_id"].append(sentence_id)
        columns["signer_id"].append(signer_id)
    return Dataset.from_dict(columns, features=features)


def _styles(seed: int, signer_ids, options: _Options, breadth: float) -> dict[int, _SignerStyle]:
    feature_dim = options.feature_dim or 1
    return {
        signer_id: _SignerStyle.sample(seed, signer_id, options.num_keypoints, feature_dim, breadth)
        for signer_id in signer_ids
    }


def make_signs_dataset(
    num_samples: int,
    seed: int = 0,
    num_keypoints: int = 21,
    keypoint_dim: int = 2,
    feature_dim: int | None = 32,
    num_signers: int = 8,
    num_sentences: int = NUM_TRAIN_SENTENCES,
    occlusion_rate: float = 0.0,
) -> Dataset:
    """Signed sentences drawn uniformly from the first `num_sentences` of `SENTENCE_POOL` (by default the training
    sentences only) by signers `0..num_signers-1`.

    `sentence_id` is the sentence's index in `SENTENCE_POOL`, so it agrees across seeds and splits. Word motions and
    the feature map are fixed; the seed drives signer styles, sentence/signer draws, tempo, dropped frames and noise.
    `occlusion_rate` is the share of clips with an occluded span (NaN keypoints; the processor needs
    `missing_keypoints="mask"`).
    """
    options = _Options(num_keypoints, keypoint_dim, feature_dim, occlusion_rate)
    options.check()
    if not 1 <= num_sentences <= len(SENTENCE_POOL):
        raise ValueError(f"num_sentences must be between 1 and {len(SENTENCE_POOL)}, got {num_sentences}.")
    if num_signers < 1:
        raise ValueError(f"num_signers must be at least 1, got {num_signers}.")
    styles = _styles(seed, range(num_signers), options, breadth=1.0)
    return _generate(
        num_samples, np.random.default_rng(seed), seed, sentence_ids=np.arange(num_sentences), styles=styles, first_index=0, options=options
    )


EVAL_SPLITS = ("seen_sentences", "unseen_sentences", "unseen_signers")
"""The held-out splits of `make_signs_splits`, in report order."""


def make_signs_splits(
    num_train: int,
    num_eval: int,
    seed: int = 0,
    num_eval_signers: int = 4,
    num_keypoints: int = 21,
    keypoint_dim: int = 2,
    feature_dim: int | None = 32,
    num_signers: int = 8,
    occlusion_rate: float = 0.0,
) -> DatasetDict:
    """`train` plus three held-out splits of `num_eval` clips each, for the three ways a test clip can be new:

    - `seen_sentences`: new clips of sentences that occur in `train`, by training signers (the old, easy split);
    - `unseen_sentences`: the `NUM_HELD_OUT_SENTENCES` sentences never drawn for training, by training signers;
    - `unseen_signers`: sentences that occur in `train`, by `num_eval_signers` signers never in training, whose
      styles come from a wider distribution.

    `train` equals `make_signs_dataset(num_train, seed, ...)`. Each held-out split has its own RNG stream; sample ids
    continue after the training ones.
    """
    if num_eval_signers < 1:
        raise ValueError(f"num_eval_signers must be at least 1, got {num_eval_signers}.")
    train = make_signs_dataset(
        num_train, seed, num_keypoints, keypoint_dim, feature_dim, num_signers, occlusion_rate=occlusion_rate
    )
    options = _Options(num_keypoints, keypoint_dim, feature_dim, occlusion_rate)
    train_signers = _styles(seed, range(num_signers), options, breadth=1.0)
    new_signers = _styles(seed, range(num_signers, num_signers + num_eval_signers), options, _UNSEEN_SIGNER_BREADTH)
    seen = np.unique(train["sentence_id"]) if num_train else np.arange(NUM_TRAIN_SENTENCES)
    unseen = np.arange(NUM_TRAIN_SENTENCES, len(SENTENCE_POOL))
    plan = {"seen_sentences": (seen, train_signers), "unseen_sentences": (unseen, train_signers), "unseen_signers": (seen, new_signers)}
    splits = {"train": train}
    for number, (name, (sentence_ids, styles)) in enumerate(plan.items()):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, number)))
        first_index = num_train + number * num_eval
        splits[name] = _generate(num_eval, rng, seed, sentence_ids=sentence_ids, styles=styles, first_index=first_index, options=options)
    return DatasetDict(splits)
