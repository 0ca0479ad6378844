"""Transcripts: emotion-conditioned sentence templates and the words that fill their slots.
Surprise comes in a pleasant and an unpleasant flavour so that MELD's Sentiment column stays
consistent with the sentence."""

from __future__ import annotations

import numpy as np

NAMES = (
    "Alex",
    "Sam",
    "Jordan",
    "Casey",
    "Riley",
    "Morgan",
    "Taylor",
    "Jamie",
    "Robin",
    "Drew",
    "Quinn",
    "Avery",
    "Charlie",
    "Emery",
    "Harper",
    "Kendall",
)
THINGS = (
    "the car",
    "the apartment",
    "the job",
    "the tickets",
    "the dinner",
    "the letter",
    "the party",
    "the interview",
    "the package",
    "the exam",
    "the trip",
    "the coffee machine",
)
TIMES = ("tonight", "tomorrow", "this morning", "on Friday", "next week", "at noon")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "neutral": (
        "I'll pick up {thing} {time}.",
        "Did you check {thing} already?",
        "{name} said it starts {time}.",
        "We can talk about {thing} later.",
        "It's on the table next to the door.",
        "The meeting moved to {time}.",
        "Can you pass me the remote?",
        "I think {name} has {thing}.",
        "Okay, let me write that down.",
        "It takes about twenty minutes from here.",
    ),
    "joy": (
        "This is the best day ever!",
        "I can't believe we got {thing}, that's wonderful!",
        "{name}, I'm so happy for you!",
        "Yes! We did it!",
        "I love it, thank you so much!",
        "That's fantastic news about {thing}!",
        "Oh, this is going to be so much fun {time}!",
        "Ha, you always make me laugh, {name}.",
    ),
    "sadness": (
        "I really miss {name}.",
        "I just feel so alone lately.",
        "We lost {thing}, it's gone.",
        "Nothing ever works out for me.",
        "I'm sorry, I can't stop crying.",
        "{name} isn't coming back, is she?",
        "It used to mean so much to me.",
        "I guess it's over now.",
    ),
    "anger": (
        "How could you do this to me?",
        "Get out of my apartment, {name}!",
        "You broke {thing} again? Unbelievable!",
        "I am sick of your excuses!",
        "Don't you dare touch {thing}!",
        "Stop lying to me, {name}!",
        "This is the last time I cover for you!",
        "Who do you think you are?",
    ),
    "surprise+": (
        "Wait, you bought {thing} for me?",
        "No way! {name} is here?",
        "Whoa, you got the job?",
        "Really? We won {thing}?",
        "Oh my God, is that a ring?",
        "You planned all this for me?",
    ),
    "surprise-": (
        "What? {thing} is gone?",
        "Wait, {name} quit?",
        "You sold {thing} without asking?",
        "What do you mean it's cancelled?",
        "Are you serious? {time}?",
        "Hold on, you lied to me?",
    ),
    "fear": (
        "Did you hear that noise?",
        "Please don't leave me here alone.",
        "I think someone is following us.",
        "What if {name} finds out?",
        "I'm scared, I can't do {thing}.",
        "Oh no, we're going to be late!",
        "There's something in the dark, {name}.",
        "Don't open that door!",
    ),
    "disgust": (
        "Ugh, what is that smell?",
        "That is absolutely gross.",
        "Eww, don't eat that!",
        "I can't believe you'd wear that.",
        "This {thing} is disgusting.",
        "Yuck, it's all sticky.",
        "How can you stand {name}?",
        "That's revolting, put it away.",
    ),
}


def sentence(rng: np.random.Generator, key: str, speaker_names: list[str]) -> str:
    """A sentence from ``TEMPLATES[key]`` with its slots filled (a cast member's name, a thing, a time)."""
    t = TEMPLATES[key][int(rng.integers(len(TEMPLATES[key])))]
    return t.format(
        name=speaker_names[int(rng.integers(len(speaker_names)))],
        thing=THINGS[int(rng.integers(len(THINGS)))],
        time=TIMES[int(rng.integers(len(TIMES)))],
    )
