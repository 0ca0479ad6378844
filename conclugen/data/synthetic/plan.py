"""The corpus plan: splits, recurring speakers, and per-clip parameters (label, what each modality
shows, intensities, transcript, place in a dialogue). Planning runs in the main process and
takes all its randomness from one generator seeded with ``seed``; rendering a clip takes its own
(see :mod:`conclugen.data.synthetic.render`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from conclugen.data.synthetic.transcripts import NAMES, sentence

EMOTIONS: tuple[str, ...] = ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust")
SPLITS: dict[str, tuple[str, str]] = {  # split → (csv name, clip folder), as MELD.Raw ships them
    "train": ("train_sent_emo.csv", "train/train_splits"),
    "dev": ("dev_sent_emo.csv", "dev/dev_splits_complete"),
    "test": ("test_sent_emo.csv", "test/output_repeated_splits_test"),
}
SPLIT_SHARES = (0.7, 0.1, 0.2)
# The unlabeled pool (``synthesize(unlabeled=N)``): MELD has no such split, so its CSV and folder
# follow MELD's naming (ours); its CSV leaves Emotion and Sentiment empty.
UNLABELED = "unlabeled"
POOL: tuple[str, str] = ("unlabeled_sent_emo.csv", "unlabeled/unlabeled_splits")

FPS = 25
SIZE = 160  # frame width and height
SAMPLE_RATE = 22050  # espeak-ng's native rate
MIN_SECONDS, MAX_SECONDS = 2.0, 4.0

# Identity: skin, hair and iris colours; espeak-ng accents and voice variants.
SKINS = (
    (255, 224, 189),
    (241, 194, 125),
    (224, 172, 105),
    (198, 134, 66),
    (161, 102, 48),
    (141, 85, 36),
    (110, 68, 34),
    (92, 56, 30),
)
HAIRS = (
    (25, 18, 12),
    (60, 40, 25),
    (110, 75, 40),
    (200, 160, 90),
    (150, 50, 25),
    (130, 130, 130),
    (230, 220, 200),
)
LIGHT_HAIRS = (3, 5, 6)  # blonde, grey, white
IRISES = ((60, 40, 20), (40, 90, 140), (70, 110, 60), (100, 70, 40))
ESPEAK_LANGS = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")


def sentiment_of(emotion: str, surprise_positive: bool = True) -> str:
    """MELD's Sentiment column for an emotion (surprise is either)."""
    if emotion == "neutral":
        return "neutral"
    if emotion == "joy":
        return "positive"
    if emotion == "surprise":
        return "positive" if surprise_positive else "negative"
    return "negative"


def split_sizes(n: int) -> dict[str, int]:
    """Clips per split for ``n`` clips: SPLIT_SHARES rounded, at least one each from 3 clips on."""
    sizes = [int(round(n * s)) for s in SPLIT_SHARES]
    if n >= 3:
        sizes = [max(1, s) for s in sizes]
    while sum(sizes) > n:
        sizes[int(np.argmax(sizes))] -= 1
    sizes[0] += n - sum(sizes)
    return dict(zip(SPLITS, sizes, strict=True))


def make_speakers(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """``n`` recurring speakers: a name, a look (face shape, skin, hair, eyes, clothes) and a voice."""
    names = list(rng.permutation(NAMES))
    speakers = []
    for i in range(n):
        female = bool(rng.random() < 0.5)
        skin = int(rng.integers(len(SKINS)))
        # Hair brighter than a dark skin (blonde, grey, white) defeats the Haar cascade (measured:
        # 20-60% of frames found), so those pairs are not drawn.
        hair_choices = [h for h in range(len(HAIRS)) if skin < 4 or h not in LIGHT_HAIRS]
        hair = hair_choices[int(rng.integers(len(hair_choices)))]
        speakers.append(
            dict(
                name=str(names[i % len(names)]) + ("" if i < len(names) else f" {i // len(names) + 1}"),
                female=female,
                skin=SKINS[skin],
                hair=HAIRS[hair],
                hair_style=int(rng.integers(4)),  # 0 short, 1 long, 2 bun, 3 cropped
                iris=IRISES[int(rng.integers(len(IRISES)))],
                shirt=tuple(int(x) for x in rng.integers(30, 230, 3)),
                aspect=float(rng.uniform(1.15, 1.4)),
                squareness=float(rng.uniform(1.8, 2.6)),  # superellipse exponent of the face
                chin=float(rng.uniform(0.0, 0.25)),
                brow_thick=float(rng.uniform(0.06, 0.1)),
                lip=float(rng.uniform(0.0, 1.0)),
                rest=dict(curve=float(rng.uniform(-0.12, 0.12)), eye=float(rng.uniform(-0.08, 0.08))),
                lang=ESPEAK_LANGS[int(rng.integers(len(ESPEAK_LANGS)))],
                variant=str(rng.choice(FEMALE_VARIANTS if female else MALE_VARIANTS)),
                pitch=int(rng.integers(52, 72) if female else rng.integers(28, 48)),
                rate=int(rng.integers(150, 185)),
                f0=float(rng.uniform(180, 240) if female else rng.uniform(95, 140)),
            )
        )
    return speakers


def other_emotion(rng: np.random.Generator, emotion: str) -> str:
    """One of the other six emotions, at random."""
    return str(rng.choice([e for e in EMOTIONS if e != emotion]))


def plan_corpus(clips: int, seed: int, difficulty: float, unlabeled: int = 0) -> list[dict[str, Any]]:
    """One plan dict per clip, in split order (train, dev, test, then the ``unlabeled`` pool), each
    split's labels balanced and shuffled, cut into dialogues of 1-6 utterances by a cast of 2-3
    speakers. The pool comes from the same process and cast; it is drawn after the labelled
    clips, so adding one leaves the labelled corpus unchanged."""
    rng = np.random.default_rng(seed)
    d = float(np.clip(difficulty, 0.0, 1.0))
    speakers = make_speakers(rng, int(np.clip(clips // 6, 3, 16)))
    plans: list[dict[str, Any]] = []
    sizes = dict(split_sizes(clips))
    if unlabeled > 0:
        sizes[UNLABELED] = int(unlabeled)
    for split, size in sizes.items():
        _plan_split(rng, d, split, size, speakers, plans)
    return plans


def _plan_split(
    rng: np.random.Generator, d: float, split: str, size: int, speakers: list[dict[str, Any]],
    plans: list[dict[str, Any]],
) -> None:
    """Append ``size`` plans of ``split`` to ``plans``: balanced shuffled emotions in dialogues."""
    names = [s["name"] for s in speakers]
    offset = int(rng.integers(len(EMOTIONS)))
    labels = [EMOTIONS[(k + offset) % len(EMOTIONS)] for k in range(size)]
    labels = [labels[i] for i in rng.permutation(size)]
    dia, k = 0, 0
    while k < size:
        n_utt = min(size - k, int(rng.integers(1, 7)))
        cast = rng.choice(len(speakers), size=min(len(speakers), int(rng.integers(2, 4))), replace=False)
        season, episode = int(rng.integers(1, 11)), int(rng.integers(1, 25))
        scene = dict(split=split, dialogue=dia, season=season, episode=episode, t0=float(rng.uniform(10, 1200)))
        for u in range(n_utt):
            spk = speakers[int(cast[u % len(cast)])]
            plans.append(_plan_utterance(rng, d, labels[k], spk, names, len(plans), u, scene))
            k += 1
        dia += 1


def _pick(rng: np.random.Generator, emotion: str, p_neutral: float, p_other: float) -> str:
    """What one modality shows: the label's emotion, or (with these odds) neutral or another one."""
    r = rng.random()
    if r < p_neutral:
        return "neutral"
    if r < p_neutral + p_other:
        return other_emotion(rng, emotion)
    return emotion


def _plan_utterance(
    rng: np.random.Generator,
    d: float,
    emotion: str,
    spk: dict[str, Any],
    names: list[str],
    index: int,
    utterance: int,
    scene: dict[str, Any],
) -> dict[str, Any]:
    """One clip's plan. Each modality independently follows the label or not, more often not at
    higher difficulty ``d``; expressions weaken with ``d`` too."""
    surprise_pos = bool(rng.random() < 0.5)
    face_e = _pick(rng, emotion, 0.25 * d, 0.15 * d)
    voice_e = _pick(rng, emotion, 0.3 * d, 0.2 * d)
    text_e = _pick(rng, emotion, 0.5 * d, 0.2 * d)
    if text_e == "surprise":
        key = "surprise+" if (surprise_pos or emotion != "surprise") else "surprise-"
    else:
        key = text_e
    intensity = float(rng.uniform(0.45, 1.0))
    return dict(
        index=index,
        split=scene["split"],
        dialogue=scene["dialogue"],
        utterance=utterance,
        season=scene["season"],
        episode=scene["episode"],
        t0=scene["t0"],
        gap=float(rng.uniform(0.2, 1.5)),
        emotion=emotion,
        sentiment=sentiment_of(emotion, surprise_pos),
        speaker=spk,
        text=sentence(rng, key, names),
        text_emotion=text_e,
        face_emotion=face_e,
        face_intensity=float(np.clip(intensity * (1 - 0.45 * d) + rng.normal(0, 0.05), 0.2, 1)),
        voice_emotion=voice_e,
        voice_intensity=float(np.clip(intensity * (1 - 0.3 * d) + rng.normal(0, 0.1), 0.2, 1)),
    )
