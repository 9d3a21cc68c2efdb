"""PyTorch + transformers peer of benches/score.rs: scores the same batches with the same model.

Usage: python3 benches/score_peer.py MODEL_DIR BATCHES_JSON REPEATS
MODEL_DIR is the f32 reward-model directory the Rust bench wrote (LlamaForSequenceClassification,
config.json + model.safetensors); BATCHES_JSON holds {"batches": [{"input_ids": [[...]],
"attention_mask": [[...]]}, ...]}. Prints one JSON object on stdout: seconds per pass over all
batches (one per repeat, after one warm-up pass), the sequence rewards of the last pass, the
threads torch used, and a 1024³ f32 matmul rate measured here (GFLOP/s).

Versions used: Python 3.11.7, torch 2.15.0 (CPU, default threads), transformers 5.24.0.
"""
import json
import sys
import time

import torch
from transformers import AutoModelForSequenceClassification


def matmul_gflops(size=1024, repeats=20):
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    seconds = (time.perf_counter() - start) / repeats
    return 2 * size**3 / seconds / 1e9


def main():
    model_dir, batches_path, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
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
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        rewards = one_pass()
        seconds.append(time.perf_counter() - start)
    print(
        json.dumps(
            dict(
                seconds=seconds,
                rewards=rewards,
                threads=torch.get_num_threads(),
                torch=torch.__version__,
                matmul_gflops=matmul_gflops(),
            )
        )
    )


if __name__ == "__main__":
    main()
