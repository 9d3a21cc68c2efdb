"""How much does the base language model notice a synthetic mistake as it reads it?

Scores each response by its smallest token log-probability under the plain LM (no reward head),
and by its smallest log-probability among tokens with a digit (where every synthetic mistake
sits), and prints the pooled AUROC of each score for correct vs wrong responses, per benchmark
(every correct response ranked against every wrong one, across questions). A high AUROC
means the base model's states carry the mistake, so a reward model built on it can learn to see
it from little data; near 0.5 means it cannot. Used to size the demo (`qrm-synth --mistakes`).

    python3 scripts/probe-lm-surprise.py GENERATIONS.jsonl [--limit 160] [--seed 0]

GENERATIONS.jsonl: qrm-synth output as JSON lines (`qrm-cat gen.parquet -o gen.jsonl`).
Needs torch, transformers, gguf and scikit-learn, and the default model installed by
scripts/install-model.sh. Tested with torch 2.15, transformers 5.24, gguf 0.19, sklearn 1.7.
"""
import argparse
import random
from collections import defaultdict

import torch
from sklearn.metrics import roc_auc_score

from probe_model import load_model, prompt_ids, read_generations


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("generations")
    parser.add_argument("--limit", type=int, default=160, help="responses per benchmark")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tokenizer, model = load_model()
    rows = read_generations(args.generations)
    random.Random(args.seed).shuffle(rows)
    by_benchmark = defaultdict(list)
    for row in rows:
        if len(by_benchmark[row["benchmark"]]) < args.limit:
            by_benchmark[row["benchmark"]].append(row)
    for benchmark, members in sorted(by_benchmark.items()):
        labels, scores, digit_scores = [], [], []
        for row in members:
            prompt = prompt_ids(tokenizer, row["question"])
            encoded = tokenizer(
                row["response"], add_special_tokens=False, return_offsets_mapping=True
            )
            response_ids = encoded["input_ids"]
            ids = torch.tensor([prompt + response_ids])
            with torch.no_grad():
                log_probs = model(ids).logits[0].log_softmax(-1)
            start = len(prompt)
            token_log_probs = log_probs[start - 1 : -1].gather(1, ids[0, start:, None])[:, 0]
            labels.append(int(row["is_correct"]))
            scores.append(token_log_probs.min().item())
            digits = [
                index
                for index, (begin, end) in enumerate(encoded["offset_mapping"])
                if any(c.isdigit() for c in row["response"][begin:end])
            ]
            digit_scores.append(token_log_probs[digits].min().item())
        print(
            f"{benchmark}: {len(labels)} responses ({sum(labels)} correct), "
            f"AUROC of the min token log-prob {roc_auc_score(labels, scores):.3f}, "
            f"of the min digit-token log-prob {roc_auc_score(labels, digit_scores):.3f}"
        )


if __name__ == "__main__":
    main()
