"""Writes the example task's data: short film-review sentences made from templates (no external
text), labelled positive or negative, 400 rows for train and 100 other rows for dev, deterministic.

    python examples/make_sentiment.py      # rewrites examples/sentiment_{train,dev}.csv
"""

import csv
import random
from pathlib import Path

SUBJECTS = ["the film", "this movie", "the story", "the acting", "the script", "the ending", "the score",
            "the cast", "the direction", "the dialogue"]
POSITIVE = ["is a delight", "is warm and funny", "moved me", "is sharp and clever", "is a quiet triumph",
            "kept me smiling", "is beautifully made", "works wonderfully", "feels fresh", "is a joy to watch"]
NEGATIVE = ["is a mess", "is tedious", "left me cold", "is flat and dull", "is a chore to sit through",
            "falls apart", "is badly made", "never works", "feels stale", "is painful to watch"]
HEDGES = ["", "honestly, ", "overall, ", "in the end, ", "for me, "]


def all_rows() -> list[tuple[str, str]]:
    """Every sentence the templates make (1,000), with its label."""
    return [(f"{hedge}{subject} {verb}.".capitalize(), label)
            for label, verbs in (("positive", POSITIVE), ("negative", NEGATIVE))
            for hedge in HEDGES for subject in SUBJECTS for verb in verbs]


def main() -> None:
    rows = all_rows()
    random.Random(0).shuffle(rows)
    folder = Path(__file__).resolve().parent
    for name, chosen in (("train", rows[:400]), ("dev", rows[400:500])):  # disjoint: no dev row is in train
        with open(folder / f"sentiment_{name}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sentence", "label"])
            writer.writerows(chosen)


if __name__ == "__main__":
    main()
