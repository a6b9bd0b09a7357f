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


def fit(examples: list[Example], strength: float) -> tuple[float, dict[str, float]]:
    """Logistic regression with balanced class weights and an L2 penalty (not on the bias), by stochastic
    gradient descent in a seeded order; the penalty is applied lazily through a common scale factor."""
    positives = sum(y for _f, y in examples)
    weight_of = {1: len(examples) / (2 * max(positives, 1)), 0: len(examples) / (2 * max(len(examples) - positives, 1))}
    bias, stored, scale = 0.0, {}, 1.0
    order = list(range(len(examples)))
    rng = random.Random(SEED)
    t = 0
    for _epoch in range(EPOCHS):
        rng.shuffle(order)
        for index in order:
            feats, y = examples[index]
            step = STEP / (1 + t / len(examples))
            t += 1
            p = _sigmoid(bias + scale * sum(v * stored.get(k, 0.0) for k, v in feats.items()))
            err = weight_of[y] * (p - y)
            scale *= 1 - step * strength
            bias -= step * err
            for k, v in feats.items():
                stored[k] = stored.get(k, 0.0) - step * err * v / scale
            if scale < 1e-6:
                stored = {k: w * scale for k, w in stored.items()}
                scale = 1.0
    return bias, {k: w * scale for k, w in stored.items()}


def accuracy(model: tuple[float, dict[str, float]], examples: list[Example]) -> float:
    bias, weights = model
    right = sum((_sigmoid(bias + sum(v * weights.get(k, 0.0) for k, v in f.items())) >= 0.5) == bool(y)
                for f, y in examples)
    return right / len(examples)


def fold_of(item_id: str) -> int:
    return hashlib.sha256(f"routing-fold:{item_id}".encode()).digest()[0] % FOLDS


def cross_validate(items: list[Item], head: str, strength: float) -> float:
    scores = []
    for fold in range(FOLDS):
        train = head_examples([i for i in items if fold_of(i.id) != fold], head)
        test = head_examples([i for i in items if fold_of(i.id) == fold], head)
        if test:
            scores.append(accuracy(fit(train, strength), test))
    return sum(scores) / len(scores)


def train(items: list[Item], log=print) -> dict:
    items = [i for i in items if i.route in CLASSIFIER_ROUTES]  # no steer head: the rules and the model decide those
    heads = {}
    for head in ("work", "followup"):
        scores = {s: cross_validate(items, head, s) for s in STRENGTHS}
        # The one-standard-error rule: the strongest penalty whose score is within one standard error of the best.
        # Differences smaller than that are noise (a message more or less in a fold), and the weaker penalty that
        # wins by them memorises more: it flipped the choice back and forth as items were added.
        top = max(scores.values())
        within = math.sqrt(top * (1 - top) / len(head_examples(items, head))) + 1e-9
        best = max(s for s in STRENGTHS if scores[s] >= top - within)
        log(f"{head:9} cross-validated accuracy by L2 strength: "
            + ", ".join(f"{s:g}: {a:.3f}" for s, a in scores.items()) + f" -> {best:g}")
        bias, weights = fit(head_examples(items, head), best)
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
