"""PyTorch + transformers peer of benches/train.rs: runs the same Bradley–Terry training steps on
the same model, pairs and learning rates as qrm, one run at a time on request, so the Rust bench
can alternate qrm and torch runs and both see the same machine load.

Usage: python3 benches/train_peer.py SPEC_JSON
SPEC_JSON holds {"rows": [[ids…], …] (the chosen responses then the rejected ones, encoded as qrm
encodes them), "pad": id}. Protocol (one JSON object per line on stdout): after loading it prints
{"torch", "threads", "matmul_gflops"}; then for every request line
{"model_dir", "first_layer", "learning_rates": [...], "max_grad_norm", "lora_dir",
"checkpointing"} it loads the model directory qrm wrote (the same initial weights, head
included), trains the layers from `first_layer` on (and the final norm and the head; the
embedding too when `first_layer` is 0) — or, with `lora_dir` (the PEFT directory of qrm's
initial adapters: r 16, α 16, all-linear, B zero, A qrm's draw), loads it with
`PeftModel.from_pretrained(..., is_trainable=True)` and trains the adapters, `model.norm` and
`score` (PEFT's modules_to_save), as qrm does —, with `checkpointing` under
`gradient_checkpointing_enable(use_reentrant=False)` (every decoder layer; the frozen ones have
nothing to save), one AdamW step (β 0.9/0.95, ε 1e-8, no weight decay, the gradient clipped to
`max_grad_norm`) per learning rate on the whole batch, and prints {"seconds": [per step],
"losses": [...], "grad_norms": [...], "peak_rss_mib"} (the peak resident set of the run: VmHWM,
reset through /proc/self/clear_refs before it, as the Rust side does).

The reward of a row is the head's value at its last real token; the loss is
mean −log σ(r_chosen − r_rejected), as qrm's `loss::bradley_terry`.

Versions used: Python 3.11.7, torch 2.15.0 (CPU, default threads), transformers 5.24.0,
peft 0.21.2.
"""
import json
import resource
import sys
import time

import torch
import torch.nn.functional as F
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


def batch(rows, pad):
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def trainable(name, first_layer):
    if "layers." in name:
        return int(name.split("layers.")[1].split(".")[0]) >= first_layer
    return first_layer == 0 or "embed_tokens" not in name


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def run(request, ids, mask):
    reset_peak_rss()
    model = AutoModelForSequenceClassification.from_pretrained(request["model_dir"], dtype=torch.float32)
    if request.get("lora_dir"):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, request["lora_dir"], is_trainable=True)
        params = [param for param in model.parameters() if param.requires_grad]
        inner = model.base_model.model  # the *ForSequenceClassification, adapters injected
    else:
        params = []
        for name, param in model.named_parameters():
            param.requires_grad_(trainable(name, request["first_layer"]))
            if param.requires_grad:
                params.append(param)
        inner = model
    if request.get("checkpointing"):
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimiser = torch.optim.AdamW(params, lr=1.0, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    last = mask.sum(dim=1) - 1
    half = ids.shape[0] // 2
    seconds, losses, norms = [], [], []
    for lr in request["learning_rates"]:
        start = time.perf_counter()
        for group in optimiser.param_groups:
            group["lr"] = lr
        hidden = inner.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # (R, L, H)
        values = inner.score(hidden)[..., 0]  # (R, L)
        rewards = values[torch.arange(ids.shape[0]), last]  # (R,)
        loss = -F.logsigmoid(rewards[:half] - rewards[half:]).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, request["max_grad_norm"])
        optimiser.step()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
        norms.append(norm.item())
    return dict(seconds=seconds, losses=losses, grad_norms=norms, peak_rss_mib=peak_rss_mib())


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    ids, mask = batch(spec["rows"], spec["pad"])
    ready = dict(torch=torch.__version__, threads=torch.get_num_threads(), matmul_gflops=matmul_gflops())
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        print(json.dumps(run(json.loads(line), ids, mask)), flush=True)


if __name__ == "__main__":
    main()
