"""PyTorch + transformers peer of benches/score.rs: scores the same batches with the same model,
one pass at a time on request, so the Rust bench can alternate qrm and torch passes and both
see the same machine load.

Usage: python3 benches/score_peer.py MODEL_DIR BATCHES_JSON
MODEL_DIR is the f32 reward-model directory the Rust bench wrote (LlamaForSequenceClassification,
config.json + model.safetensors); BATCHES_JSON holds {"batches": [{"input_ids": [[...]],
"attention_mask": [[...]]}, ...]}.
Protocol (one JSON object per line on stdout): after loading and one warm-up pass it prints
{"torch", "threads", "matmul_gflops"} (the best of 20 1024³ f32 matmuls, measured here); then for every
line read on stdin it runs one pass over all batches and prints {"seconds", "rewards"}.

Versions used: Python 3.11.7, torch 2.15.0 (CPU, default threads), transformers 5.24.0.
"""
import json
import sys
import time

import torch
from transformers import AutoModelForSequenceClassification


def matmul_gflops(size=1024, repeats=20):
    """The fastest of `repeats` timed matmuls (the peak: on a shared machine a mean measures the load)."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    a @ b
    seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds = min(seconds, time.perf_counter() - start)
    return 2 * size**3 / seconds / 1e9


def main():
    model_dir, batches_path = sys.argv[1], sys.argv[2]
    with open(batches_path) as f:
        batches = json.load(f)["batches"]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    tensors = [
        (torch.tensor(b["input_ids"]), torch.tensor(b["attention_mask"])) for b in batches
    ]

    def one_pass():
        rewards = []
        with torch.inference_mode():
            for ids, mask in tensors:
                logits = model(input_ids=ids, attention_mask=mask).logits  # (batch, 1)
                rewards.extend(logits[:, 0].tolist())
        return rewards

    one_pass()
    ready = dict(torch=torch.__version__, threads=torch.get_num_threads(), matmul_gflops=matmul_gflops())
    print(json.dumps(ready), flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        rewards = one_pass()
        seconds = time.perf_counter() - start
        print(json.dumps(dict(seconds=seconds, rewards=rewards)), flush=True)


if __name__ == "__main__":
    main()
