#!/usr/bin/env python3
"""`make serve-check`: qrm-serve against OpenRLHF's own client, under load, and under faults.

Runs on loopback only, with bounded counts and times, and stops every server it starts. Uses
the standard library; the OpenRLHF client check also needs `aiohttp` and the `openrlhf` wheel
(downloaded with pip, without its dependencies), else it uses a stand-in that sends the same
request bytes and says so. The report (markdown) goes to stdout, progress to stderr; the exit
status is 1 when a check fails.

  python3 scripts/serve-check.py --bin target/release --rm MODEL --rm-flag=--head \
      --rm-flag=linear --zeroeval gsm8k_test_42models.jsonl.gz --work .cache/serve-check

Texts: ZeroEval GSM8K, the first questions in file order with the solutions of 12 models each
(the repro-gsm8k shape), so the server's rounds can share prompts as offline qrm-score does.
"""

import argparse
import asyncio
import gzip
import http.client
import importlib
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import zipfile

CHATML = "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
# SmolLM2-Instruct's chat template adds this system turn when the messages have none.
SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
          "Hugging Face<|im_end|>\n")
EOS = "<|im_end|>"
OPENRLHF = "openrlhf==0.11.2"
TOLERANCE = 1e-5

failures = []


def log(message):
    print(f"serve-check: {message}", file=sys.stderr, flush=True)


def check(condition, what):
    if not condition:
        failures.append(what)
        log(f"FAILED: {what}")
    return condition


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    position = (len(values) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return values[low] + (values[high] - values[low]) * (position - low)


# ---- texts, offline scores -------------------------------------------------------------------

def load_texts(path, questions, models_per_question=12):
    by_question = {}
    order = []
    with gzip.open(path, "rt", encoding="utf-8") as file:
        for line in file:
            row = json.loads(line)
            key = row["id"]
            if key not in by_question:
                if len(order) == questions:
                    continue
                order.append(key)
                by_question[key] = []
            if len(by_question[key]) < models_per_question:
                by_question[key].append(row)
    texts = []
    for key in order:
        for row in by_question[key]:
            texts.append({"question_id": key, "question": row["question"],
                          "response": row["output"], "is_correct": bool(row["is_correct"]),
                          "gold": row["gold"]})
    return texts


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")


def read_jsonl(path):
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def run_tool(args, what):
    started = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"serve-check: {what} failed (exit {done.returncode})")
    return done.stderr, time.monotonic() - started


# ---- the server ------------------------------------------------------------------------------

def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, binary, model_args, extra, name):
        self.port = free_port()
        self.name = name
        command = [binary, *model_args, "--listen", f"127.0.0.1:{self.port}", *extra]
        self.stderr = open(os.path.join(WORK, f"{name}.log"), "w")
        self.process = subprocess.Popen(command, stderr=self.stderr)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"serve-check: {name} exited; see {self.stderr.name}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"serve-check: {name} did not answer /health within 300 s")

    def connection(self, timeout=180):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path):
        connection = self.connection(10)
        try:
            connection.request("GET", path)
            reply = connection.getresponse()
            return reply.status, reply.read().decode()
        finally:
            connection.close()

    def post(self, path, body, connection=None):
        """(status, JSON body, headers); `connection` is kept alive when given."""
        own = connection is None
        connection = connection or self.connection()
        try:
            connection.request("POST", path, body=json.dumps(body),
                               headers={"Content-Type": "application/json"})
            reply = connection.getresponse()
            data = reply.read()
            return reply.status, json.loads(data) if data else None, dict(reply.getheaders())
        finally:
            if own:
                connection.close()

    def metric(self, name):
        status, text = self.get("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def rss_mib(self):
        try:
            with open(f"/proc/{self.process.pid}/status") as file:
                for line in file:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return float("nan")
        return float("nan")

    def terminate(self, timeout=120):
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.stderr.close()
        return code, time.monotonic() - started


def query_of(text, system=False):
    prompt = (SYSTEM if system else "") + CHATML.format(question=text["question"])
    return prompt, prompt + text["response"] + EOS


def close(a, b):
    return a is not None and b is not None and abs(a - b) <= TOLERANCE


# ---- 1. OpenRLHF's own client ----------------------------------------------------------------

def openrlhf_executor():
    """OpenRLHF's SingleTurnAgentExecutor, loaded from its wheel without running the package's
    __init__ (which imports torch): `openrlhf.utils.agent` needs only aiohttp and the
    standard-library logging_utils. None (and why) when that is not possible here."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return None, "aiohttp is not installed"
    root = os.path.join(WORK, "openrlhf")
    if not os.path.isdir(os.path.join(root, "openrlhf")):
        wheels = os.path.join(WORK, "wheel")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                               OPENRLHF, "-d", wheels], capture_output=True, text=True)
        found = [f for f in os.listdir(wheels) if f.endswith(".whl")] if os.path.isdir(wheels) else []
        if done.returncode != 0 or not found:
            return None, f"pip could not download {OPENRLHF}: {done.stderr.strip()[-200:]}"
        with zipfile.ZipFile(os.path.join(wheels, found[0])) as wheel:
            wheel.extractall(os.path.join(WORK, "unpacked"))
        for base, dirs, _ in os.walk(os.path.join(WORK, "unpacked")):
            if "openrlhf" in dirs and os.path.isfile(os.path.join(base, "openrlhf", "utils", "agent.py")):
                os.makedirs(root, exist_ok=True)
                os.rename(os.path.join(base, "openrlhf"), os.path.join(root, "openrlhf"))
                break
        else:
            return None, "the openrlhf wheel holds no openrlhf/utils/agent.py"
    package = os.path.join(root, "openrlhf")
    for name, path in [("openrlhf", package), ("openrlhf.utils", os.path.join(package, "utils"))]:
        module = types.ModuleType(name)
        module.__path__ = [path]
        sys.modules[name] = module
    agent = importlib.import_module("openrlhf.utils.agent")
    return agent.SingleTurnAgentExecutor, None


def check_openrlhf_client(server, texts, offline, count):
    executor_class, why = openrlhf_executor()
    url = f"http://127.0.0.1:{server.port}/get_reward"
    worst, replies = 0.0, 0
    if executor_class is not None:
        executor = executor_class(remote_rm_url=url)
        client = f"OpenRLHF {OPENRLHF}'s `SingleTurnAgentExecutor._fetch_rewards_via_http` (aiohttp)"

        def fetch(query, prompt, label):
            result = asyncio.run(executor._fetch_rewards_via_http([query], [prompt], [label]))
            return result[0]
    else:
        client = (f"a stand-in sending OpenRLHF's request (`{{query, prompts, labels}}`, one "
                  f"query) because {why}")

        def fetch(query, prompt, label):
            return server.post("/get_reward", {"query": [query], "prompts": [prompt],
                                               "labels": [label]})[1]
    for text, expected in zip(texts[:count], offline[:count]):
        prompt, query = query_of(text)
        reply = fetch(query, prompt, text["gold"])
        reward = reply["rewards"][0] if reply else None
        replies += reward is not None
        if reward is not None:
            worst = max(worst, abs(reward - expected))
        check(close(reward, expected), f"OpenRLHF client reward {reward} vs offline {expected}")
    return client, replies, worst


# ---- 2. load ---------------------------------------------------------------------------------

def load_test(server, texts, offline, clients):
    """Each text once, as a single-item /get_reward request, from `clients` threads."""
    next_index = iter(range(len(texts)))
    lock = threading.Lock()
    latencies, wrong, lost = [], [], []
    rss = []
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.is_set():
            rss.append((time.monotonic(), server.rss_mib()))
            stop_sampling.wait(0.5)

    def client():
        connection = server.connection()
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                break
            prompt, query = query_of(texts[index])
            started = time.monotonic()
            try:
                status, body, _ = server.post("/get_reward", {"query": [query], "prompts": [prompt],
                                                              "labels": [None]}, connection)
            except (OSError, http.client.HTTPException) as error:
                lost.append((index, str(error)))
                connection.close()
                connection = server.connection()
                continue
            latencies.append(time.monotonic() - started)
            if status != 200:
                lost.append((index, status))
            elif not close(body["rewards"][0], offline[index]):
                wrong.append((index, body["rewards"][0], offline[index]))
        connection.close()

    tokens_before = server.metric("qrm_serve_scored_tokens_total")
    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    stop_sampling.set()
    sampler.join()
    tokens = server.metric("qrm_serve_scored_tokens_total") - tokens_before
    return {"wall": wall, "tokens": tokens, "latencies": latencies, "wrong": wrong, "lost": lost,
            "rss": rss}


# ---- 3. faults -------------------------------------------------------------------------------

def raw_request(server, body_bytes, send_bytes=None, read=True, delay=0.0):
    """Sends a POST /get_reward over a raw socket: the first `send_bytes` of the body (all by
    default), a byte every `delay` seconds when given; returns the status line or None."""
    head = (f"POST /get_reward HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body_bytes)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as stream:
        stream.sendall(head)
        body = body_bytes if send_bytes is None else body_bytes[:send_bytes]
        if delay:
            for byte in body:
                stream.sendall(bytes([byte]))
                time.sleep(delay)
        else:
            stream.sendall(body)
        if not read:
            return None
        reply = b""
        while chunk := stream.recv(65536):
            reply += chunk
        return reply


def status_and_reward(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, (json.loads(body)["rewards"][0] if status == 200 else None)


def fault_disconnects(server, texts, offline):
    prompt, query = query_of(texts[0])
    body = json.dumps({"query": [query], "prompts": [prompt]}).encode()
    cancelled_before = server.metric('qrm_serve_dropped_jobs_total{reason="cancelled"}')
    raw_request(server, body, send_bytes=len(body) // 2, read=False)
    raw_request(server, body, read=False)
    time.sleep(1.0)
    status, reply, _ = server.post("/get_reward", {"query": [query], "prompts": [prompt]})
    ok = check(status == 200 and close(reply["rewards"][0], offline[0]),
               "a request after two disconnected clients is answered correctly")
    return {"after": status, "ok": ok,
            "cancelled": server.metric('qrm_serve_dropped_jobs_total{reason="cancelled"}')
            - cancelled_before}


def fault_slow_client(server, texts, offline):
    prompt, query = query_of(texts[1])
    body = json.dumps({"query": [query], "prompts": [prompt]}).encode()
    delay = 6.0 / len(body)
    result = {}

    def slow():
        started = time.monotonic()
        result["slow"] = status_and_reward(raw_request(server, body, delay=delay))
        result["slow_seconds"] = time.monotonic() - started

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.5)
    others = []
    for index in range(2, 7):
        started = time.monotonic()
        p, q = query_of(texts[index])
        status, reply, _ = server.post("/get_reward", {"query": [q], "prompts": [p]})
        others.append((status, time.monotonic() - started,
                       close(reply["rewards"][0], offline[index]) if status == 200 else False))
    others_done = time.monotonic()
    thread.join()
    status, reward = result["slow"]
    check(all(s == 200 and good for s, _, good in others), "other clients are answered while one is slow")
    check(status == 200 and close(reward, offline[1]), "the slow client is answered correctly")
    check(others_done < time.monotonic(), "other clients finish before the slow one")
    return {"slow_seconds": result["slow_seconds"], "slow_status": status, "delay_ms": delay * 1000,
            "others_max": max(t for _, t, _ in others), "others": len(others)}


def fault_burst(binary, model_args, texts, offline, burst, max_queue):
    server = Server(binary, model_args, ["--max-queue", str(max_queue), "-q"], "burst-server")
    outcomes = [None] * burst
    retries = [0] * burst
    first_status = [None] * burst
    retry_after = set()

    def client(index):
        text_index = index % len(texts)
        prompt, query = query_of(texts[text_index])
        while True:
            status, body, headers = server.post("/get_reward", {"query": [query], "prompts": [prompt]})
            if first_status[index] is None:
                first_status[index] = status
            if status == 503:
                retry_after.add(headers.get("retry-after") or headers.get("Retry-After"))
                retries[index] += 1
                time.sleep(float(headers.get("retry-after", headers.get("Retry-After", 1))))
                continue
            outcomes[index] = (status, close(body["rewards"][0], offline[text_index]) if status == 200 else False)
            return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(burst)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    code, seconds = server.terminate()
    refused = sum(1 for s in first_status if s == 503)
    check(refused > 0, f"a burst of {burst} above --max-queue {max_queue} gets some 503s")
    check(all(o == (200, True) for o in outcomes), "every burst request is answered correctly after retries")
    check(retry_after == {"1"} or not refused, f"503s carry Retry-After: 1 ({retry_after})")
    check(code == 0, f"the burst server exits 0 on SIGTERM (got {code})")
    return {"burst": burst, "max_queue": max_queue, "refused_first": refused,
            "retries": sum(retries), "answered": sum(1 for o in outcomes if o == (200, True))}


def fault_sigterm(server, texts, offline, clients, after):
    """Clients in a loop; SIGTERM after `after` seconds; every reply is 200 and right, or the
    connection is refused or closed once the server stops accepting."""
    stop = threading.Event()
    lock = threading.Lock()
    counts = {"ok": 0, "wrong": 0, "refused": 0, "other": 0}

    def client(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            index = rng.randrange(len(texts))
            prompt, query = query_of(texts[index])
            try:
                status, body, _ = server.post("/get_reward", {"query": [query], "prompts": [prompt]})
            except (OSError, http.client.HTTPException):
                with lock:
                    counts["refused"] += 1
                time.sleep(0.05)
                continue
            with lock:
                if status == 200:
                    counts["ok" if close(body["rewards"][0], offline[index]) else "wrong"] += 1
                else:
                    counts["other"] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(after)
    answered_before = counts["ok"]
    in_flight = server.metric("qrm_serve_in_flight_requests")
    code, seconds = server.terminate()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    check(code == 0, f"qrm-serve exits 0 on SIGTERM under load (got {code})")
    check(counts["wrong"] == 0, "no wrong reply during shutdown")
    return {"code": code, "seconds": seconds, "in_flight": in_flight,
            "answered_before": answered_before, **counts}


# ---- 4. a PPO-shaped exchange ----------------------------------------------------------------

def ppo_smoke(server, texts, steps=3, prompts_per_step=2):
    """OpenRLHF's side of PPO: rollouts of a prompt batch (here the 12 ZeroEval solutions of
    each question, under the SmolLM2 chat template with its default system turn), remote
    rewards, group-normalised advantages. Checks the reply shape, both request shapes, and
    reports the mean reward of correct and wrong rollouts."""
    by_question = {}
    for text in texts:
        by_question.setdefault(text["question_id"], []).append(text)
    groups = list(by_question.values())
    prompts_per_step = min(prompts_per_step, max(1, len(groups) // steps))
    steps = min(steps, len(groups) // prompts_per_step)
    lines = []
    for step in range(steps):
        batch = [t for g in groups[step * prompts_per_step:(step + 1) * prompts_per_step] for t in g]
        prompts, queries = zip(*(query_of(t, system=True) for t in batch))
        labels = [t["gold"] for t in batch]
        status, reply, _ = server.post("/get_reward", {"query": list(queries), "prompts": list(prompts),
                                                       "labels": labels})
        check(status == 200 and len(reply["rewards"]) == len(batch), f"PPO step {step}: a reward per rollout")
        old_status, old, _ = server.post("/get_reward", {"query": list(queries)})
        check(old_status == 200 and all(close(a, b) for a, b in zip(old["rewards"], reply["rewards"])),
              f"PPO step {step}: the old request shape gives the same rewards")
        rewards = reply["rewards"]
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)) or 1.0
        advantages = [(r - mean) / std for r in rewards]
        correct = [r for r, t in zip(rewards, batch) if t["is_correct"]]
        wrong = [r for r, t in zip(rewards, batch) if not t["is_correct"]]
        logs = sorted(reply["extra_logs"])
        lines.append(f"| {step} | {len(batch)} | {mean:.4f} | {max(abs(a) for a in advantages):.3f} | "
                     f"{(sum(correct) / len(correct)) if correct else float('nan'):.4f} | "
                     f"{(sum(wrong) / len(wrong)) if wrong else float('nan'):.4f} | {', '.join(logs) or '–'} |")
    return lines


# ---- main ------------------------------------------------------------------------------------

def main():
    global WORK
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", required=True, help="folder of the qrm release binaries")
    parser.add_argument("--rm", required=True)
    parser.add_argument("--rm-flag", action="append", default=[], help="extra model flags (repeat)")
    parser.add_argument("--zeroeval", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--requests", type=int, default=264, help="load-test requests (texts)")
    parser.add_argument("--clients", type=int, default=128)
    parser.add_argument("--openrlhf-requests", type=int, default=24)
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--burst-queue", type=int, default=8)
    args = parser.parse_args()
    WORK = os.path.abspath(args.work)
    os.makedirs(WORK, exist_ok=True)
    tool = lambda name: os.path.join(args.bin, name)
    model_args = ["--rm", args.rm, *args.rm_flag]

    questions = math.ceil(args.requests / 12)
    texts = load_texts(args.zeroeval, questions)[: args.requests]
    log(f"{len(texts)} texts of {questions} questions")
    write_jsonl(os.path.join(WORK, "texts.jsonl"), texts)
    # The goal state: the correct solution of each of the first 16 questions with both labels.
    pool = load_texts(args.zeroeval, 200)
    pairs = []
    for key in dict.fromkeys(t["question_id"] for t in pool):
        if len(pairs) == 16:
            break
        group = [t for t in pool if t["question_id"] == key]
        good = [t for t in group if t["is_correct"]]
        bad = [t for t in group if not t["is_correct"]]
        if good and bad:
            pairs.append({"question": group[0]["question"], "chosen": good[0]["response"],
                          "rejected": bad[0]["response"]})
    write_jsonl(os.path.join(WORK, "pairs.jsonl"), pairs)
    goal = os.path.join(WORK, "goal.safetensors")
    run_tool([tool("qrm-embed"), os.path.join(WORK, "pairs.jsonl"), *model_args, "-o", goal, "-q"],
             "qrm-embed")
    log("offline qrm-score of the same texts")
    stderr, _ = run_tool([tool("qrm-score"), os.path.join(WORK, "texts.jsonl"), *model_args,
                          "--goal", goal, "-o", os.path.join(WORK, "offline.jsonl")], "qrm-score")
    match = re.search(r": (\d+) tokens in ([\d.]+)s \((\d+) tokens/s\)", stderr)
    offline_tokens, offline_seconds = int(match.group(1)), float(match.group(2))
    offline_rate = offline_tokens / offline_seconds
    offline = [row["reward"] for row in read_jsonl(os.path.join(WORK, "offline.jsonl"))]

    server = Server(tool("qrm-serve"), model_args, ["--goal", goal, "-q"], "server")
    rss_start = server.rss_mib()
    log("OpenRLHF client")
    client, replies, worst = check_openrlhf_client(server, texts, offline, args.openrlhf_requests)
    log(f"load test: {len(texts)} single-item requests from {args.clients} clients")
    load = load_test(server, texts, offline, args.clients)
    check(not load["wrong"] and not load["lost"], "the load test loses no reply and none is wrong")
    load_rate = load["tokens"] / load["wall"]
    check(load_rate >= 0.8 * offline_rate, f"load throughput {load_rate:.0f} ≥ 80 % of offline {offline_rate:.0f} tokens/s")
    log("faults")
    disconnects = fault_disconnects(server, texts, offline)
    slow = fault_slow_client(server, texts, offline)
    ppo = ppo_smoke(server, texts)
    rss_end = server.rss_mib()
    burst = fault_burst(tool("qrm-serve"), model_args, texts, offline, args.burst, args.burst_queue)
    sigterm = fault_sigterm(server, texts, offline, min(args.clients, 64), after=3.0)

    rss = [m for _, m in load["rss"]]
    third = max(1, len(rss) // 3)
    print("# qrm-serve check\n")
    print(f"Model `{args.rm}` {' '.join(args.rm_flag)}, goal from {len(pairs)} pairs; {len(texts)} "
          f"ZeroEval GSM8K texts ({questions} questions × 12 models). Host: {os.cpu_count()} CPUs.\n")
    print("## OpenRLHF's client\n")
    print(f"{client}: {replies} of {args.openrlhf_requests} replies, largest |reward − offline "
          f"qrm-score| {worst:.2e} (tolerance {TOLERANCE:g}).\n")
    print("## Load\n")
    print("| | value |\n|---|---|")
    print(f"| requests (single item) / clients | {len(texts)} / {args.clients} |")
    print(f"| wall time | {load['wall']:.1f} s |")
    print(f"| tokens scored | {load['tokens']:.0f} |")
    print(f"| server throughput | {load_rate:.0f} tokens/s |")
    print(f"| offline qrm-score, same texts, same run | {offline_rate:.0f} tokens/s ({offline_tokens} tokens in {offline_seconds:.1f} s) |")
    print(f"| ratio server / offline | {load_rate / offline_rate:.3f} |")
    print(f"| latency p50 / p99 | {percentile(load['latencies'], 0.5):.2f} s / {percentile(load['latencies'], 0.99):.2f} s |")
    print(f"| lost / wrong replies | {len(load['lost'])} / {len(load['wrong'])} |")
    print(f"| resident memory: start, mean of first third, mean of last third, peak | {rss_start:.0f}, "
          f"{sum(rss[:third]) / third:.0f}, {sum(rss[-third:]) / third:.0f}, {max(rss):.0f} MiB |")
    print(f"| resident memory after the fault checks | {rss_end:.0f} MiB |\n")
    print("## Faults\n")
    print(f"- **Client disconnects mid-request** (half a body, then a whole request closed before the "
          f"reply): the server dropped {disconnects['cancelled']:.0f} queued job(s) of gone clients and the "
          f"next request got {disconnects['after']} with the right reward.")
    print(f"- **Slow client** (its body sent one byte every {slow['delay_ms']:.1f} ms, "
          f"{slow['slow_seconds']:.1f} s in all): {slow['others']} other requests were answered meanwhile "
          f"(slowest {slow['others_max']:.2f} s); the slow one got {slow['slow_status']} with the right reward.")
    print(f"- **Burst above the queue bound** ({burst['burst']} concurrent requests, --max-queue "
          f"{burst['max_queue']}): {burst['refused_first']} first answered 503 with `Retry-After: 1`; retrying "
          f"as told ({burst['retries']} retries), {burst['answered']} of {burst['burst']} got the right reward.")
    print(f"- **SIGTERM under load** (64 clients in a loop, {sigterm['in_flight']:.0f} requests in flight): "
          f"exit {sigterm['code']} after {sigterm['seconds']:.1f} s; {sigterm['ok']} right replies in all, "
          f"{sigterm['wrong']} wrong, {sigterm['other']} other statuses, {sigterm['refused']} connections "
          f"refused or closed once it stopped accepting.\n")
    print("## A PPO-shaped exchange\n")
    print("Each step: the 12 rollouts of a few prompts under SmolLM2's chat template with its system turn, "
          "rewards from `/get_reward` (new and old request shapes agree), group-normalised advantages.\n")
    print("| step | rollouts | mean reward | max abs advantage | mean reward, correct | mean reward, wrong | extra_logs |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(ppo))
    print()
    if failures:
        print("## Failed\n")
        for failure in failures:
            print(f"- {failure}")
        return 1
    print("Every check passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
