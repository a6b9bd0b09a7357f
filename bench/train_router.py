"""Train the shipped route classifier on the TUNING part of the labelled routing set.

    .venv/bin/python bench/train_router.py [--check]

Two L2-regularised logistic-regression heads over assistant.conversation.route_classifier.features:
- work:     job or follow-up job, against answer or follow-up answer (every tuning item);
- followup: follow-up answer or job, against the rest (tuning items whose conversation has jobs).
The regularisation strength is picked by 5-fold cross-validation on the tuning part (the strongest within one
standard error of the best score); the held-out part is never read. Stochastic gradient descent in a seeded order
with a fixed fold assignment: the same set gives the same weights, byte for byte. Writes assistant/conversation/route_classifier.json; --check only
says whether the shipped file is what this training produces (exit 1 if not).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.conversation.route_classifier import FORMAT, WEIGHTS_PATH, features, head_features  # noqa: E402
from bench.routing_set import CLASSIFIER_ROUTES, SET_PATH, Item, load_set  # noqa: E402

STRENGTHS = (0.001, 0.003, 0.01, 0.03)
FOLDS = 5
EPOCHS = 40
STEP = 0.2
SEED = 12

Example = tuple[dict[str, float], int]


def head_examples(items: list[Item], head: str) -> list[Example]:
    def example(item: Item) -> Example:
        feats = head_features(head, features(item.text, item.job_records()))
        return feats, int(item.route in ("job", "followup_job") if head == "work" else item.route.startswith("followup"))
    return [example(i) for i in items if head == "work" or i.jobs]


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))


class Indexed:
    """A head's examples with each feature name numbered once, so that cross-validation's many fits work on lists
    (the same arithmetic in the same order as over the names: the same weights, byte for byte, in a third of the
    time) and each item is featurised once, not once per fold and strength."""

    def __init__(self, items: list[Item], head: str):
        kept = [i for i in items if head == "work" or i.jobs]
        self.names: list[str] = []
        number: dict[str, int] = {}
        self.by_id: dict[str, tuple[tuple[tuple[int, float], ...], int]] = {}
        for item, (feats, y) in zip(kept, head_examples(kept, head)):
            self.by_id[item.id] = (tuple((number.setdefault(k, len(number)), v) for k, v in feats.items()), y)
        self.names = list(number)

    def examples(self, items: list[Item]) -> list[tuple[tuple[tuple[int, float], ...], int]]:
        return [self.by_id[i.id] for i in items if i.id in self.by_id]


def _fit(examples: list, size: int, strength: float) -> tuple[float, list[float], list[bool]]:
    """Logistic regression with balanced class weights and an L2 penalty (not on the bias), by stochastic
    gradient descent in a seeded order; the penalty is applied lazily through a common scale factor."""
    positives = sum(y for _f, y in examples)
    weight_of = {1: len(examples) / (2 * max(positives, 1)), 0: len(examples) / (2 * max(len(examples) - positives, 1))}
    bias, stored, seen, scale = 0.0, [0.0] * size, [False] * size, 1.0
    order = list(range(len(examples)))
    rng = random.Random(SEED)
    n, t, exp = len(examples), 0, math.exp
    for _epoch in range(EPOCHS):
        rng.shuffle(order)
        for index in order:
            feats, y = examples[index]
            step = STEP / (1 + t / n)
            t += 1
            z = bias + scale * sum([v * stored[k] for k, v in feats])
            p = 1 / (1 + exp(-(-30.0 if z < -30.0 else 30.0 if z > 30.0 else z)))   # _sigmoid, inlined
            err = weight_of[y] * (p - y)
            scale *= 1 - step * strength
            bias -= step * err
            moved = step * err
            for k, v in feats:
                stored[k] = stored[k] - moved * v / scale
                seen[k] = True
            if scale < 1e-6:
                stored = [w * scale for w in stored]
                scale = 1.0
    return bias, [w * scale for w in stored], seen


def fit(examples: list[Example], strength: float) -> tuple[float, dict[str, float]]:
    """`_fit` over named features: the bias and the weight of every feature the examples have."""
    number: dict[str, int] = {}
    indexed = [(tuple((number.setdefault(k, len(number)), v) for k, v in f.items()), y) for f, y in examples]
    bias, weights, _seen = _fit(indexed, len(number), strength)
    return bias, dict(zip(number, weights))


def _accuracy(bias: float, weights: list[float], examples: list) -> float:
    right = sum((_sigmoid(bias + sum(v * weights[k] for k, v in f)) >= 0.5) == bool(y) for f, y in examples)
    return right / len(examples)


def accuracy(model: tuple[float, dict[str, float]], examples: list[Example]) -> float:
    bias, weights = model
    right = sum((_sigmoid(bias + sum(v * weights.get(k, 0.0) for k, v in f.items())) >= 0.5) == bool(y)
                for f, y in examples)
    return right / len(examples)


def fold_of(item_id: str) -> int:
    return hashlib.sha256(f"routing-fold:{item_id}".encode()).digest()[0] % FOLDS


def cross_validate(items: list[Item], head: str, strength: float, indexed: Indexed | None = None) -> float:
    indexed = indexed or Indexed(items, head)
    scores = []
    for fold in range(FOLDS):
        train = indexed.examples([i for i in items if fold_of(i.id) != fold])
        test = indexed.examples([i for i in items if fold_of(i.id) == fold])
        if test:
            bias, weights, _seen = _fit(train, len(indexed.names), strength)
            scores.append(_accuracy(bias, weights, test))
    return sum(scores) / len(scores)


def train(items: list[Item], log=print) -> dict:
    items = [i for i in items if i.route in CLASSIFIER_ROUTES]  # no steer head: the rules and the model decide those
    heads = {}
    for head in ("work", "followup"):
        indexed = Indexed(items, head)
        scores = {s: cross_validate(items, head, s, indexed) for s in STRENGTHS}
        # The one-standard-error rule: the strongest penalty whose score is within one standard error of the best.
        # Differences smaller than that are noise (a message more or less in a fold), and the weaker penalty that
        # wins by them memorises more: it flipped the choice back and forth as items were added.
        top = max(scores.values())
        within = math.sqrt(top * (1 - top) / len(head_examples(items, head))) + 1e-9
        best = max(s for s in STRENGTHS if scores[s] >= top - within)
        log(f"{head:9} cross-validated accuracy by L2 strength: "
            + ", ".join(f"{s:g}: {a:.3f}" for s, a in scores.items()) + f" -> {best:g}")
        bias, weights, seen = _fit(indexed.examples(items), len(indexed.names), best)
        weights = {name: w for name, w, was in zip(indexed.names, weights, seen) if was}
        heads[head] = {"strength": best, "cv_accuracy": round(scores[best], 4), "bias": round(bias, 5),
                       "weights": {k: round(w, 5) for k, w in sorted(weights.items()) if abs(w) >= 1e-4}}
    return {"format": FORMAT,
            "trained_on": {"set": "bench/routing_set.jsonl", "split": "tune", "items": len(items),
                           "sha256": hashlib.sha256(SET_PATH.read_bytes()).hexdigest()},
            "heads": heads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped weights instead of writing")
    args = parser.parse_args()
    model = train(load_set(split="tune"))
    text = json.dumps(model, indent=0, sort_keys=True) + "\n"
    if args.check:
        same = WEIGHTS_PATH.is_file() and WEIGHTS_PATH.read_text() == text
        print("the shipped weights match this training" if same else
              f"{WEIGHTS_PATH} differs from this training: run bench/train_router.py")
        return 0 if same else 1
    WEIGHTS_PATH.write_text(text)
    print(f"wrote {WEIGHTS_PATH} ({len(text) // 1024} KiB, "
          + ", ".join(f"{h}: {len(m['weights'])} weights" for h, m in model["heads"].items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
