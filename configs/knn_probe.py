#!/usr/bin/env python3
"""A non-linear check of `ca eval`'s linear salient probe (docs/trials.md, 2026-12-07).

    python3 configs/knn_probe.py CODES.csv ROOT/labels.csv [LABEL]

CODES.csv is `ca encode --run RUN --data ROOT --out CODES.csv`; ROOT a folder export with
labels (`ca data export-synthetic`). On the target rows: the 5-fold accuracy of a 10-nearest-
neighbour vote (codes standardised per column, folds from a seed-0 shuffle) predicting LABEL
(default overlay_type) from s and from z, beside the majority-class rate. If s holds the label
but not linearly, this is well above the linear probe; if it is near the linear probe, s does
not hold the label. Standard library only; a few seconds for 1,000 rows.
"""

import csv
import math
import random
import sys


def standardise(rows):
    n, d = len(rows), len(rows[0])
    mu = [sum(r[j] for r in rows) / n for j in range(d)]
    sd = [math.sqrt(sum((r[j] - mu[j]) ** 2 for r in rows) / n) or 1.0 for j in range(d)]
    return [[(r[j] - mu[j]) / sd[j] for j in range(d)] for r in rows]


def knn_accuracy(x, y, k=10, folds=5):
    order = list(range(len(x)))
    random.Random(0).shuffle(order)
    correct = 0
    for f in range(folds):
        test = order[f::folds]
        held = set(test)
        train = [i for i in order if i not in held]
        for i in test:
            near = sorted(train, key=lambda j: sum((a - b) ** 2 for a, b in zip(x[i], x[j])))[:k]
            votes = {}
            for j in near:
                votes[y[j]] = votes.get(y[j], 0) + 1
            correct += max(votes, key=votes.get) == y[i]
    return correct / len(x)


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    codes, labels = sys.argv[1], sys.argv[2]
    label = sys.argv[3] if len(sys.argv) == 4 else "overlay_type"
    wanted = {}
    with open(labels, newline="") as f:
        for r in csv.DictReader(f):
            if r["split"] == "target":
                if label not in r:
                    sys.exit(f"{labels}: no column '{label}'")
                wanted[r["file"]] = r[label]
    s_rows, z_rows, y = [], [], []
    with open(codes, newline="") as f:
        for r in csv.DictReader(f):
            if r["split"] != "target" or r["file"] not in wanted:
                continue
            s_rows.append([float(v) for k, v in r.items() if k.startswith("salient_")])
            z_rows.append([float(v) for k, v in r.items() if k.startswith("common_")])
            y.append(wanted[r["file"]])
    if len(y) < 20:
        sys.exit(f"{codes}: only {len(y)} target rows match {labels}; encode the same ROOT")
    chance = max(y.count(c) for c in set(y)) / len(y)
    print(f"{len(y)} target rows, label {label}, majority rate {chance:.3f}")
    for name, rows in (("s", s_rows), ("z", z_rows)):
        print(f"{label} from {name}: 10-NN accuracy {knn_accuracy(standardise(rows), y):.3f}")


if __name__ == "__main__":
    main()
