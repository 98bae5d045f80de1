"""Synthetic, varied chat prompts for distillation, built from templates and stdlib passages.

The draft must imitate the target where it will be used: answering chat requests. So we ask
the target itself many requests of the kinds a chat model serves (writing, role play,
reasoning, math, code, extraction, science and humanities questions, translation,
summarization, short factual questions, questions about a passage) and distill on its own
answers. Every prompt is a pure function of (seed, index), so a run is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ssd_tools.distill import wordlists as W
from ssd_tools.distill.corpus import Passage, window


@dataclass(frozen=True)
class PromptSpec:
    index: int
    category: str
    text: str


Maker = Callable[[random.Random, Sequence[Passage]], str]


def _passage(rng: random.Random, ps: Sequence[Passage], lo: int, hi: int) -> tuple[str, str]:
    """About lo..hi characters of documentation: a window of one passage, topped up with the
    passages that follow it (same module first) when it is short."""
    i = rng.randrange(len(ps))
    text = window(ps[i].text, rng, lo, hi)
    j = i + 1
    while len(text) < lo and j < len(ps) and j < i + 8:
        text += "\n\n" + ps[j].text
        j += 1
    return ps[i].title, text[:hi]


def writing(rng: random.Random, ps: Sequence[Passage]) -> str:
    form, topic = rng.choice(W.FORMS), rng.choice(W.TOPICS)
    extra = rng.choice(["", " Keep it under 200 words.", " Use a cheerful tone.", " Be concise."])
    return (
        rng.choice(
            ["Write {} about {}.", "Compose {} on the topic of {}.", "Draft {} about {}."]
        ).format(form, topic)
        + extra
    )


def roleplay(rng: random.Random, ps: Sequence[Passage]) -> str:
    return f"Pretend to be {rng.choice(W.PERSONAS)}. {rng.choice(W.QUESTIONS)}"


def reasoning(rng: random.Random, ps: Sequence[Passage]) -> str:
    a, b, c = rng.sample(W.NAMES, 3)
    n = rng.randint(3, 9)
    return rng.choice(
        [
            f"{a} is taller than {b}, and {b} is taller than {c}. Who is the shortest? Explain.",
            f"If {a} is older than {b} and {c} is younger than {b}, who is the oldest?",
            f"There are {n} birds on a tree. A hunter shoots one. How many birds are left on "
            "the tree?",
            f"{a} has {n} sisters. Each sister has one brother. How many siblings does {a} have?",
            f"A bat and a ball cost {n}.10 dollars in total. The bat costs {n} dollars more "
            "than the ball. How much does the ball cost?",
            f"In a race you overtake the person in position {n}. What position are you in now?",
            f"If it takes {n} machines {n} minutes to make {n} widgets, how long would it take "
            f"{n * 10} machines to make {n * 10} widgets?",
        ]
    )


def math(rng: random.Random, ps: Sequence[Passage]) -> str:
    a, b, c = rng.randint(2, 30), rng.randint(2, 50), rng.randint(50, 300)
    return rng.choice(
        [
            f"Solve for x: {a}x + {b} = {c}.",
            f"What is the area of a triangle with base {a} and height {b}?",
            f"Find the sum of all integers from 1 to {c}.",
            f"What is {a}% of {c}?",
            f"A circle has a radius of {a}. What is its circumference?",
            f"Find the greatest common divisor of {a * 6} and {b * 4}.",
            f"What is the derivative of {a}x^3 + {b}x^2 - x?",
            f"Is {c * 2 + 1} a prime number? Show your reasoning.",
            f"What is the probability of rolling a sum of {rng.randint(2, 12)} with two dice?",
        ]
    )


def coding(rng: random.Random, ps: Sequence[Passage]) -> str:
    lang, task = rng.choice(W.LANGUAGES), rng.choice(W.CODE_TASKS)
    return rng.choice(
        [
            f"Write a {lang} function that {task}.",
            f"Implement a {lang} program that {task}. Add comments.",
            f"How would you write code in {lang} that {task}? Explain each step.",
        ]
    )


def extraction(rng: random.Random, ps: Sequence[Passage]) -> str:
    _, text = _passage(rng, ps, 500, 1500)
    ask = rng.choice(
        [
            "Extract all function and class names mentioned in the following text, as a list.",
            "List the three most important points of the following text.",
            "Return a JSON object with keys 'topic' and 'keywords' for the following text.",
            "Identify every parameter mentioned in the following documentation.",
        ]
    )
    return f"{ask}\n\n{text}"


def stem(rng: random.Random, ps: Sequence[Passage]) -> str:
    c = rng.choice(W.CONCEPTS)
    return rng.choice(
        [
            f"Explain {c} in simple terms.",
            f"What is {c}, and why does it matter?",
            f"Describe {c} to a high school student.",
            f"How does {c} work? Give an example.",
        ]
    )


def humanities(rng: random.Random, ps: Sequence[Passage]) -> str:
    c, t = rng.choice(W.CONCEPTS), rng.choice(W.TOPICS)
    return rng.choice(
        [
            f"Discuss the impact of {t} on society.",
            f"What are the main arguments for and against {t}?",
            f"How has {c} shaped the modern world?",
            f"Compare two different perspectives on {t}.",
        ]
    )


def translation(rng: random.Random, ps: Sequence[Passage]) -> str:
    if rng.random() < 0.3:
        sentence = rng.choice(W.DE_SIMPLE)
    else:
        s, v, c = rng.choice(W.DE_SUBJECTS), rng.choice(W.DE_VERBS), rng.choice(W.DE_CLAUSES)
        sentence = f"{s} {v} {c}."
    return f"Translate German to English: {sentence}"


def summarization(rng: random.Random, ps: Sequence[Passage]) -> str:
    _, text = _passage(rng, ps, 1200, 3000)
    return rng.choice(["Summarize: ", "Summarize the following text:\n", "Summarize: "]) + text


def qa(rng: random.Random, ps: Sequence[Passage]) -> str:
    return rng.choice(W.FACT_QUESTIONS).format(
        country=rng.choice(W.COUNTRIES),
        invention=rng.choice(W.INVENTIONS),
        book=rng.choice(W.BOOKS),
        concept=rng.choice(W.CONCEPTS),
        river=rng.choice(W.RIVERS),
        discovery=rng.choice(W.DISCOVERIES),
    )


def math_reasoning(rng: random.Random, ps: Sequence[Passage]) -> str:
    a, b = rng.sample(W.NAMES, 2)
    item = rng.choice(W.ITEMS)
    x, y, z = rng.randint(3, 40), rng.randint(2, 20), rng.randint(2, 9)
    price = rng.randint(2, 15)
    return rng.choice(
        [
            f"{a} has {x} {item}. {a} buys {y} more and gives {z} to {b}. How many {item} does {a} "
            "have now?",
            f"{a} sells {item} for ${price} each. On Monday {a} sells {x} and on Tuesday {y}. How "
            f"much money does {a} make in total?",
            f"A box holds {z} {item}. {a} needs {x * z} {item}. How many boxes does {a} need?",
            f"{a} reads {y} pages a day. The book has {x * y + z} pages. How many days does it "
            f"take {a} to finish the book?",
            f"{a} earns ${x} per hour and works {z} hours a day, {y % 6 + 1} days a week. How much "
            f"does {a} earn in a week?",
            f"The price of a jacket is ${x * 10}. It is discounted by {z * 5}%. What is the new "
            "price?",
            f"{a} is {x} years old. {b} is {z} years younger than twice {a}'s age. How old is {b}?",
        ]
    )


def rag(rng: random.Random, ps: Sequence[Passage]) -> str:
    title, text = _passage(rng, ps, 1200, 3000)
    name = title.split(":")[-1]
    q = rng.choice(
        [
            f"What does {name} do?",
            f"Describe the purpose of {name}.",
            "According to the text, what are the main rules described?",
            "What are the key details mentioned above?",
            f"How is {name} used?",
        ]
    )
    return f"{text}\n{q}"


# Spec-Bench's mix is five task families of equal size plus MT-Bench's eight; we keep a
# similar balance so no family dominates the draft's capacity.
CATEGORIES: dict[str, tuple[Maker, float]] = {
    "writing": (writing, 0.05),
    "roleplay": (roleplay, 0.04),
    "reasoning": (reasoning, 0.03),
    "math": (math, 0.04),
    "coding": (coding, 0.05),
    "extraction": (extraction, 0.03),
    "stem": (stem, 0.04),
    "humanities": (humanities, 0.04),
    "translation": (translation, 0.14),
    "summarization": (summarization, 0.13),
    "qa": (qa, 0.14),
    "math_reasoning": (math_reasoning, 0.14),
    "rag": (rag, 0.13),
}


def make_prompts(n: int, seed: int, passages: Sequence[Passage]) -> list[PromptSpec]:
    """`n` prompts; prompt i depends only on (seed, i) and the passages."""
    names = list(CATEGORIES)
    weights = [CATEGORIES[c][1] for c in names]
    out = []
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")
        cat = rng.choices(names, weights)[0]
        out.append(PromptSpec(i, cat, CATEGORIES[cat][0](rng, passages)))
    return out
