"""What the probe scripts share: the default model (plain LM, no reward head) and its tokenizer,
the generations file, and a question's prompt as qrm-score encodes it.

Imported by scripts/probe-lm-surprise.py and scripts/probe-frozen-states.py (run from the
repository root, as `python3 scripts/probe-….py`). Needs torch, transformers and gguf, and the
default model installed by scripts/install-model.sh.
"""
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL_DIR = ".cache/models"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER = "../shared/data/models/smollm2-135m-instruct"


def load_model():
    """The tokenizer and the f32 model on 2 threads, in eval mode."""
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF, dtype=torch.float32)
    model.eval()
    return tokenizer, model


def read_generations(path):
    """qrm-synth output as JSON lines (`qrm-cat gen.parquet -o gen.jsonl`), one dict a row."""
    with open(path) as lines:
        return [json.loads(line) for line in lines]


def prompt_ids(tokenizer, question):
    """The question as one user turn of the chat template, ready for the response."""
    messages = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]
