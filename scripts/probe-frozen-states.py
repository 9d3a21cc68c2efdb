"""Do the frozen model's states carry a synthetic mistake, and where: at the last token (what a
reward head reads) or spread over the response?

For a seeded subset of questions, runs the plain model (no reward head) over each distinct
response (chat template, then the response and `<|im_end|>`, as qrm-score reads it), keeps the
hidden states of the chosen layers, and fits a logistic-regression probe (scikit-learn,
standardised features, L2 strength 1/C) on two of three questions to tell correct from wrong
responses from (a) the last token's state and (b) the mean state over the response tokens. It
prints the pooled AUROC on the held-out third of the questions (question-disjoint, so a probe
cannot learn a question's offset) and on the training questions.

    python3 scripts/probe-frozen-states.py GENERATIONS.jsonl [--questions 240] [--seed 0]

GENERATIONS.jsonl: qrm-synth output as JSON lines (`qrm-cat gen.parquet -o gen.jsonl`).
Needs torch, transformers, gguf and scikit-learn, and the default model installed by
scripts/install-model.sh. Tested with torch 2.15, transformers 5.24, gguf 0.19, sklearn 1.7.
"""
import argparse
import random

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from probe_model import load_model, prompt_ids, read_generations


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("generations")
    parser.add_argument("--questions", type=int, default=240, help="questions drawn")
    parser.add_argument("--layers", default="12,18,24,27,30", help="hidden-state layers (0 = embeddings)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    layers = [int(layer) for layer in args.layers.split(",")]
    tokenizer, model = load_model()
    rows = read_generations(args.generations)
    questions = sorted({row["question_id"] for row in rows})
    random.Random(args.seed).shuffle(questions)
    questions = questions[: args.questions]
    test_questions = set(questions[: len(questions) // 3])
    chosen, seen, members = set(questions), set(), []
    for row in rows:
        key = (row["question_id"], row["response"])
        if row["question_id"] in chosen and key not in seen:
            seen.add(key)
            members.append(row)
    last = {layer: [] for layer in layers}
    mean = {layer: [] for layer in layers}
    labels, test = [], []
    for row in members:
        prompt = prompt_ids(tokenizer, row["question"])
        response_ids = tokenizer(row["response"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + response_ids])
        with torch.no_grad():
            states = model(ids, output_hidden_states=True).hidden_states
        for layer in layers:
            last[layer].append(states[layer][0, -1].numpy())
            mean[layer].append(states[layer][0, len(prompt):].mean(0).numpy())
        labels.append(int(row["is_correct"]))
        test.append(row["question_id"] in test_questions)
    labels, test = np.array(labels), np.array(test)
    train = ~test
    print(
        f"{len(labels)} distinct responses of {len(questions)} questions ({labels.sum()} correct); "
        f"probe trained on {train.sum()}, tested on {test.sum()} of other questions"
    )
    print("| read from | layer | C | test pooled AUROC | train pooled AUROC |")
    print("|---|---|---|---|---|")
    for name, features in [("last token", last), ("mean over the response", mean)]:
        for layer in layers:
            x = np.stack(features[layer])
            x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
            for c in [0.01, 0.1]:
                probe = LogisticRegression(C=c, max_iter=2000).fit(x[train], labels[train])
                on_test = roc_auc_score(labels[test], probe.decision_function(x[test]))
                on_train = roc_auc_score(labels[train], probe.decision_function(x[train]))
                print(f"| {name} | {layer} | {c} | {on_test:.3f} | {on_train:.3f} |")


if __name__ == "__main__":
    main()
