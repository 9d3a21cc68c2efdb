"""Peer timings for benches/metrics.rs: scikit-learn's roc_auc_score and a direct NumPy
Q-filter (the released get_accuracy logic, vectorised) on the .npy files the Rust bench wrote.

Usage: python3 benches/metrics_peer.py DIR   (prints one JSON object)
Versions used: Python 3.11, numpy 2.4.6, scikit-learn 1.9.1. Single-threaded.
"""
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

SAMPLES_PER_QUESTION = 50


def median_time(runs, f):
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = f()
        times.append(time.perf_counter() - start)
    return sorted(times)[runs // 2], result


def numpy_filter(q, correct, answers, threshold=0.0, skip=5):
    n, _ = q.shape
    tail = q[:, skip:]
    below = tail < threshold
    dropped = below.any(axis=1)
    first = below.argmax(axis=1)
    saved = np.where(dropped, tail.shape[1] - first, 0)
    questions = n // SAMPLES_PER_QUESTION
    shape = (questions, SAMPLES_PER_QUESTION)
    dropped, saved = dropped.reshape(shape), saved.reshape(shape)
    correct, answers = correct.reshape(shape), answers.reshape(shape)
    kept = ~dropped
    fallback = ~kept.any(axis=1)
    kept = kept | fallback[:, None]

    def vote(mask):
        num_correct = (mask & correct).sum(axis=1)
        wrong = mask & ~correct
        largest = np.zeros(questions, dtype=np.int64)
        for answer in np.unique(answers[~correct]):
            largest = np.maximum(largest, (wrong & (answers == answer)).sum(axis=1))
        return (num_correct > 0) & (num_correct >= largest)

    all_samples = np.ones(shape, dtype=bool)
    scored = tail.shape[1] * SAMPLES_PER_QUESTION
    saved_fraction = np.where(fallback, 0.0, saved.sum(axis=1) / scored)
    return {
        "accuracy": float(vote(all_samples).mean()),
        "accuracy_filtered": float(vote(kept).mean()),
        "tokens_saved_pct": float(100 * saved_fraction.mean()),
    }


def main():
    directory = sys.argv[1]
    load = lambda name: np.load(os.path.join(directory, name))  # noqa: E731
    scores, labels = load("scores.npy"), load("labels.npy")
    q, correct, answers = load("q_values.npy"), load("is_correct.npy"), load("answers.npy")
    auroc_s, auroc = median_time(3, lambda: roc_auc_score(labels, scores))
    filter_s, summary = median_time(3, lambda: numpy_filter(q, correct, answers))
    print(json.dumps({"sklearn_auroc_s": auroc_s, "sklearn_auroc": float(auroc),
                      "numpy_filter_s": filter_s, **summary}))


if __name__ == "__main__":
    main()
