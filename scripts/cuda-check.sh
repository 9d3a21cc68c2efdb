#!/usr/bin/env bash
# Checks qrm's CUDA build on a GPU machine that may have no Rust, no network and no CUDA toolkit.
# Needs what scripts/cuda-build.sh packaged in .cache/cuda-dist, and .cache/cuda-dist-curand
# where the device has no cuRAND 13 (run tool: carry=[".cache/cuda-dist", ".cache/cuda-dist-curand"]).
#
#   bash scripts/cuda-check.sh            # everything: libraries, parity, training, timing
#
# Environment:
#   QRM_CHECK_DEVICE=cuda    device under test (cpu: exercise this script without a GPU)
#   QRM_CHECK_STEPS=all      or a comma list of: libs,parity,train,timing
#   QRM_CHECK_TIMING_CPU=0   1: also time the random SmolLM2-135M on the CPU (slow)
#   QRM_CHECK_BATCH_TOKENS="4096 16384"   --batch-tokens values timed
#   QRM_CHECK_TIMING_GENS=   generations to time on (default the dist's 512 synth rows)
#   QRM_CHECK_LIBDIRS=       extra ':'-separated directories to search for CUDA libraries
#   QRM_CHECK_WORK=/tmp/qrm-cuda-check   scratch directory (the 540 MB random model goes here)
#   QRM_CHECK_OUT=           copy logs, small outputs and the summary there at the end ($OUT)
# Exit codes: 0 all ran steps passed, 1 a step failed, 3 a library or the driver is missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIST="${QRM_CHECK_DIST:-$REPO/.cache/cuda-dist}"
CURAND_DIST="${QRM_CHECK_CURAND_DIST:-$DIST-curand}"   # optional: cuRAND for devices without it
DEVICE="${QRM_CHECK_DEVICE:-cuda}"
STEPS="${QRM_CHECK_STEPS:-all}"
WORK="${QRM_CHECK_WORK:-${TMPDIR:-/tmp}/qrm-cuda-check}"
FIX="$REPO/tests/fixtures"
SUMMARY=()
FAILED=0

say() { printf '[cuda-check] %s\n' "$*" >&2; }
die() { printf '[cuda-check] ERROR: %s\n' "$1" >&2; exit "${2:-1}"; }
note() { SUMMARY+=("$*"); say "$*"; }
fail() { SUMMARY+=("FAIL: $*"); say "FAIL: $*"; FAILED=1; }
want() { [[ "$STEPS" == all || ",$STEPS," == *",$1,"* ]]; }
have() { command -v "$1" >/dev/null 2>&1; }
PY=""; have python3 && PY=python3

summary() {
    printf '\n==== qrm CUDA check summary (device %s) ====\n' "$DEVICE"
    local line
    for line in "${SUMMARY[@]}"; do printf '  %s\n' "$line"; done
    if [[ $FAILED -eq 0 ]]; then printf '  RESULT: ok\n'; else printf '  RESULT: FAILED\n'; fi
    if [[ -n "${QRM_CHECK_OUT:-}" && -d "$WORK" ]]; then  # keep the logs and small outputs
        mkdir -p "$QRM_CHECK_OUT/qrm-cuda-check"
        find "$WORK" -maxdepth 1 -type f -size -2M \( -name '*.log' -o -name '*.jsonl' -o -name '*.json' \) \
            -exec cp {} "$QRM_CHECK_OUT/qrm-cuda-check/" \; 2>/dev/null || true
        printf '%s\n' "${SUMMARY[@]}" > "$QRM_CHECK_OUT/qrm-cuda-check/SUMMARY.txt"
    fi
}
trap summary EXIT

# ---------------------------------------------------------------- unpack the binaries
[[ -f "$DIST/MANIFEST" ]] || die "no $DIST/MANIFEST: build with scripts/cuda-build.sh and carry .cache/cuda-dist"
say "dist: $(head -3 "$DIST/MANIFEST" | tr '\n' ';')"
(cd "$DIST" && sed -n '/^[0-9a-f]\{64\}  /p' MANIFEST | sha256sum -c --quiet -) \
    || die "$DIST does not match its MANIFEST (truncated transfer?)"
rm -rf "$WORK" && mkdir -p "$WORK/bin"
ARCHIVE="$DIST/bin/qrm-bins.tar.xz"
if have xz; then
    xz -dc "$ARCHIVE" | tar -C "$WORK/bin" -xf -
elif [[ -n "$PY" ]]; then
    $PY -c 'import tarfile,sys; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' "$ARCHIVE" "$WORK/bin"
else
    die "neither xz nor python3 is here to unpack $ARCHIVE"
fi
chmod +x "$WORK"/bin/*
BIN="$WORK/bin"

# ---------------------------------------------------------------- driver and libraries
# the shared libraries the binaries need (from the build's readelf), minus libc & co
NEEDS=$(sed -n 's/^needs: //p' "$DIST/MANIFEST")
CUDA_NEEDS=()
for lib in $NEEDS; do
    case "$lib" in libcuda.so*|libcudart*|libcublas*|libcurand*|libnvrtc*|libcudnn*|libnccl*) CUDA_NEEDS+=("$lib") ;; esac
    # cuBLAS loads cuBLASLt (541 MB) from beside itself or the library path
    [[ "$lib" == libcublas.so.* ]] && CUDA_NEEDS+=("libcublasLt.so.${lib##*.so.}")
done

# where a library may be: extra dirs, LD_LIBRARY_PATH, the ld cache, CUDA installs, pip wheels
candidate_dirs() {
    local d
    tr ':' '\n' <<< "${QRM_CHECK_LIBDIRS:-}:${LD_LIBRARY_PATH:-}"
    if have ldconfig; then ldconfig -p 2>/dev/null | sed -n 's/.* => \(.*\)\/[^/]*$/\1/p' | sort -u; fi
    for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/nvidia/lib64 /usr/lib/wsl/lib \
        /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
        /usr/local/cuda-13*/targets/x86_64-linux/lib /opt/cuda/lib64; do echo "$d"; done
    # pip's nvidia-* wheels (PyTorch installs them): nvidia/cu13/lib (13.x) or nvidia/*/lib
    local sp=()
    if [[ -n "$PY" ]]; then
        mapfile -t sp < <($PY -c 'import site,sys; print("\n".join(site.getsitepackages()+[site.getusersitepackages()]+sys.path))' 2>/dev/null || true)
    fi
    sp+=(/usr/lib/python3*/*-packages /usr/local/lib/python3*/*-packages /opt/conda/lib/python3*/site-packages
         /opt/conda/envs/*/lib/python3*/site-packages /root/.pyenv/versions/*/lib/python3*/site-packages
         /root/.local/lib/python3*/site-packages /opt/*/lib/python3*/site-packages /opt/conda/lib)
    for d in "${sp[@]}"; do
        [[ -d "$d" ]] || continue
        echo "$d"
        ls -d "$d"/nvidia/*/lib 2>/dev/null || true
    done
}

find_lib() {  # name -> first directory holding it
    local name="$1" d
    while read -r d; do
        [[ -n "$d" && -e "$d/$name" ]] && { echo "$d"; return 0; }
    done < <(candidate_dirs)
    return 1
}

LIBDIRS=("$DIST/lib")
check_libs() {
    local lib dir missing=()
    if have nvidia-smi; then
        note "driver: $(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1 | head -1)"
        local cv; cv=$(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' || true)
        [[ -n "$cv" ]] && note "driver supports ${cv}"
    else
        [[ "$DEVICE" == cuda* ]] && note "nvidia-smi not found (driver tools missing?)"
    fi
    for lib in "${CUDA_NEEDS[@]}"; do
        if [[ -e "$DIST/lib/$lib" ]]; then
            say "lib $lib: shipped in $DIST/lib"
        elif dir=$(find_lib "$lib"); then
            say "lib $lib: $dir/$lib -> $(readlink -f "$dir/$lib")"
            [[ " ${LIBDIRS[*]} " == *" $dir "* ]] || LIBDIRS+=("$dir")
        elif [[ -e "$CURAND_DIST/$lib.xz" ]]; then
            mkdir -p "$WORK/lib"
            if have xz; then xz -dc "$CURAND_DIST/$lib.xz" > "$WORK/lib/$lib"
            elif [[ -n "$PY" ]]; then $PY -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' "$CURAND_DIST/$lib.xz" "$WORK/lib/$lib"
            else missing+=("$lib"); continue; fi
            [[ "$(sha256sum "$WORK/lib/$lib" | cut -d' ' -f1)" == "$(cat "$CURAND_DIST/SOURCE_SHA256")" ]] \
                || die "$CURAND_DIST/$lib.xz does not unpack to the library it was made from (truncated transfer?)"
            note "lib $lib: not on this machine, using the copy carried in $CURAND_DIST"
            [[ " ${LIBDIRS[*]} " == *" $WORK/lib "* ]] || LIBDIRS+=("$WORK/lib")
        else
            missing+=("$lib")
        fi
    done
    export LD_LIBRARY_PATH
    LD_LIBRARY_PATH="$(IFS=:; echo "${LIBDIRS[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    if [[ ${#missing[@]} -gt 0 ]]; then
        local m
        for m in "${missing[@]}"; do
            case "$m" in
                libcuda.so.1) fail "missing $m: the NVIDIA driver's user-space library (no driver, or the container was started without the GPU driver mounted)" ;;
                libcublas.so.13|libcublasLt.so.13) fail "missing $m: cuBLAS 13 (pip wheel nvidia-cublas 13.x, as PyTorch cu13x installs it, or a CUDA 13 toolkit); CUDA 12 libraries (.so.12) do not fit this build" ;;
                libcurand.so.10) fail "missing $m: cuRAND from CUDA 13 (pip wheel nvidia-curand 10.4.x); carry .cache/cuda-dist-curand (made by scripts/cuda-build.sh dist) to use the build machine's copy" ;;
                libnvrtc.so.13) fail "missing $m: NVRTC 13 (pip wheel nvidia-cuda-nvrtc 13.x)" ;;
                *) fail "missing $m" ;;
            esac
        done
        die "missing libraries (searched LD_LIBRARY_PATH, ldconfig, /usr/local/cuda*, pip nvidia/*/lib; add dirs with QRM_CHECK_LIBDIRS)" 3
    fi
    local unresolved
    unresolved=$(ldd "$BIN/qrm-score" 2>&1 | grep 'not found' || true)
    [[ -z "$unresolved" ]] || die "ldd still reports missing libraries: $unresolved" 3
    note "libs: all of ${CUDA_NEEDS[*]} found; LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
}
check_libs

[[ -n "$PY" ]] || say "warning: no python3: parity numbers cannot be compared and the timing model cannot be written"

# ---------------------------------------------------------------- helpers
DATA="$WORK/data"; mkdir -p "$DATA"
# short generations for the tiny models (max_position_embeddings 64)
for i in $(seq 0 11); do
    printf '{"question_id":"q%d","sample":%d,"question":"What is %d + %d?","response":"%d + %d = %d.%s","is_correct":%s}\n' \
        $((i % 4)) "$i" "$i" "$i" "$i" "$i" $((2 * i)) "$(printf ' Yes.%.0s' $(seq 0 $((i % 3))))" \
        "$([[ $((i % 3)) -ne 0 ]] && echo true || echo false)"
done > "$DATA/gens.jsonl"
for i in $(seq 0 11); do
    printf '{"question":"What is %d + %d?","chosen":"%d + %d = %d.","rejected":"%d + %d = %d."}\n' \
        "$i" "$i" "$i" "$i" $((2 * i)) "$i" "$i" $((2 * i + 1))
done > "$DATA/pairs.jsonl"

# compare two qrm-score outputs (JSON Lines): max |a-b| of reward, token_rewards, q_values
compare_scores() {  # a.jsonl b.jsonl tol label
    [[ -n "$PY" ]] || { note "$4: no python3, not compared (outputs in $WORK)"; return 0; }
    local out
    if out=$($PY - "$1" "$2" "$3" <<'EOF'
import json, sys, math
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
tol = float(sys.argv[3])
assert len(a) == len(b), f"{len(a)} vs {len(b)} rows"
worst = {}
for ra, rb in zip(a, b):
    for col in ("reward", "token_rewards", "q_values"):
        xa, xb = ra.get(col), rb.get(col)
        if xa is None and xb is None:
            continue
        xa = xa if isinstance(xa, list) else [xa]
        xb = xb if isinstance(xb, list) else [xb]
        assert len(xa) == len(xb), f"{col}: {len(xa)} vs {len(xb)} tokens"
        scale = max(1.0, max(abs(v) for v in xa + xb))
        d = max(abs(p - q) for p, q in zip(xa, xb)) / scale
        worst[col] = max(worst.get(col, 0.0), d)
msg = ", ".join(f"{k} max rel diff {v:.2e}" for k, v in worst.items())
print(f"{len(a)} rows: {msg}")
sys.exit(0 if worst and all(v <= tol for v in worst.values()) else 1)
EOF
    ); then note "$4: ok, $out (tol $3)"; else fail "$4: ${out:-compare failed} (tol $3)"; fi
}

run_logged() {  # label logfile cmd...
    local label="$1" log="$2"; shift 2
    local rc=0
    "$@" > "$log.out" 2> "$log" || rc=$?
    [[ $rc -eq 0 ]] && return 0
    fail "$label: exit $rc: $(grep -m1 -iE 'error|panic' "$log" | cut -c1-300) (log: $log)"
    tail -15 "$log" | sed 's/^/    /' >&2
    return 1
}

# ---------------------------------------------------------------- parity on the tiny fixtures
# CPU runs f32, CUDA runs bf16: agreement to ~1e-2 relative is what bf16 allows.
TOL="${QRM_CHECK_TOL:-0.05}"
if want parity; then
    for model in tiny-llama tiny-qwen2; do
        for side in ref dut; do
            dev=cpu; [[ $side == dut ]] && dev="$DEVICE"
            tag="$model-$side"
            common=(--rm "$FIX/$model" --tokenizer "$FIX/tiny-tokenizer/tokenizer.json" --template chatml --max-len 64 --device "$dev" -q)
            run_logged "embed $tag" "$WORK/embed-$tag.log" \
                "$BIN/qrm-embed" "$DATA/pairs.jsonl" "${common[@]}" -o "$WORK/goal-$tag.safetensors" || continue
            run_logged "score $tag" "$WORK/score-$tag.log" \
                "$BIN/qrm-score" "$DATA/gens.jsonl" "${common[@]}" --goal "$WORK/goal-$tag.safetensors" \
                -o "$WORK/scores-$tag.jsonl" || continue
        done
        if [[ -f "$WORK/scores-$model-ref.jsonl" && -f "$WORK/scores-$model-dut.jsonl" ]]; then
            compare_scores "$WORK/scores-$model-ref.jsonl" "$WORK/scores-$model-dut.jsonl" "$TOL" \
                "parity $model cpu-f32 vs $DEVICE"
        fi
    done
fi

# ---------------------------------------------------------------- a short training run
if want train; then
    # the tiny llama with a word-level tokenizer (as tests/cli/support.rs builds it)
    M="$WORK/tiny-llama-word"; mkdir -p "$M"
    cp "$FIX/tiny-llama/config.json" "$FIX/tiny-llama/model.safetensors" "$M/"
    {
        printf '{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,'
        printf '"pre_tokenizer":{"type":"WhitespaceSplit"},"post_processor":null,"decoder":null,'
        printf '"model":{"type":"WordLevel","unk_token":"<unk>","vocab":{"<unk>":0,"<s>":1,"</s>":2'
        for id in $(seq 3 99); do printf ',"w%d":%d' "$id" "$id"; done
        printf '}}}\n'
    } > "$M/tokenizer.json"
    echo '{"eos_token": "</s>"}' > "$M/tokenizer_config.json"
    # the tiny qwen2 (a linear `score` head, as LoRA needs) with the same tokenizer
    M2="$WORK/tiny-qwen2-word"; mkdir -p "$M2"
    cp "$FIX/tiny-qwen2/config.json" "$FIX/tiny-qwen2/model.safetensors" "$M/tokenizer.json" "$M/tokenizer_config.json" "$M2/"
    for q in $(seq 0 11); do for p in 0 1; do
        printf '{"pair_id":"%d-%d","question_id":"q%d","question":"w%d w%d","chosen":"w%d w%d w5 w7","rejected":"w%d w%d w6 w7 w8"}\n' \
            "$q" "$p" "$q" $((20 + q)) $((30 + p)) $((10 + q)) $((40 + p)) $((10 + q)) $((40 + p))
    done; done > "$DATA/train-pairs.jsonl"
    for q in $(seq 0 11); do for r in "w5 w7" "w6 w7 w8"; do
        printf '{"question_id":"q%d","question":"w%d w30","response":"w%d w40 %s","is_correct":%s}\n' \
            "$q" $((20 + q)) $((10 + q)) "$r" "$([[ $r == "w5 w7" ]] && echo true || echo false)"
    done; done > "$DATA/train-gens.jsonl"
    # Variants: the plain top-layer run on the tiny llama, and LoRA on every linear layer with
    # gradient checkpointing on the tiny qwen2. The reference is f32 on the CPU; the device runs
    # bf16 (its default: mixed precision, f32 masters) and f32. Each device run's first-step loss
    # must agree with the reference to 5 % (bf16) or 1 % (f32), and a bf16 run's resumable state
    # must hold f32 masters.
    VARIANTS=("plain|$M|" "lora-ckpt|$M2|--lora-rank 4 --lora-alpha 8 --lora-targets all-linear --checkpoint-layers")
    train_parity() {  # reference log, device log, relative tolerance
        $PY - "$1" "$2" "$3" <<'EOF'
import json, sys, math
def losses(path):
    rows = [json.loads(l) for l in open(path)]
    keys = [k for k in ("loss", "loss_bt", "train_loss") if any(k in r for r in rows)]
    return [r.get(keys[0]) for r in rows if keys and r.get(keys[0]) is not None], keys
a, ka = losses(sys.argv[1]); b, kb = losses(sys.argv[2]); tol = float(sys.argv[3])
if not a or not b:
    print(f"no loss column found (keys {ka} {kb})"); sys.exit(1)
bad = [x for x in b if not math.isfinite(x)]
print(f"{ka[0]} cpu {[round(x, 4) for x in a]} vs device {[round(x, 4) for x in b]} (first step within {tol:.0%})")
sys.exit(1 if bad or abs(a[0] - b[0]) > tol * max(1, abs(a[0])) else 0)
EOF
    }
    masters_f32() {  # a state/trainable.safetensors: every tensor F32 (from the safetensors header)
        $PY - "$1" <<'EOF'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
header.pop("__metadata__", None)
dtypes = sorted({v["dtype"] for v in header.values()})
print(f"{len(header)} master tensors in {dtypes}")
sys.exit(0 if dtypes == ["F32"] else 1)
EOF
    }
    for variant in "${VARIANTS[@]}"; do
        IFS='|' read -r name model flags <<< "$variant"; read -r -a extra <<< "$flags"
        runs=("ref|cpu|f32")
        if [[ "$DEVICE" == cpu ]]; then runs+=("dut|cpu|bf16"); else runs+=("dut|$DEVICE|bf16" "dut|$DEVICE|f32"); fi
        for run in "${runs[@]}"; do
            IFS='|' read -r side dev dtype <<< "$run"
            tag="$side-${dev//:/}-$name-$dtype"
            t0=$(date +%s.%N)
            if run_logged "train $tag" "$WORK/train-$tag.log" \
                "$BIN/qrm-train" "$DATA/train-pairs.jsonl" --model "$model" --template raw --objective q \
                --train-layers 1 --batch-size 4 --micro-batch 2 --max-steps 6 --positives 4 --negatives 4 \
                --eval-fraction 0.25 --lr 1e-3 --eval-every 3 -q --device "$dev" --dtype "$dtype" "${extra[@]}" \
                --cache "$WORK/trunk-$tag" --log "$WORK/train-$tag.jsonl" -o "$WORK/ckpt-$tag"; then
                t1=$(date +%s.%N)
                note "train $tag: 6 steps in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s, last log line: $(tail -1 "$WORK/train-$tag.jsonl" | cut -c1-160)"
                run_logged "score with the $tag checkpoint" "$WORK/score-ckpt-$tag.log" \
                    "$BIN/qrm-score" "$DATA/train-gens.jsonl" --rm "$WORK/ckpt-$tag" --template raw --device "$dev" -q \
                    -o "$WORK/scores-ckpt-$tag.jsonl" || true
                # A device run logs the GPU memory it saw in use (peak_device_mib); a CPU run none.
                if [[ -n "$PY" && "$dev" != cpu ]]; then
                    if out=$($PY -c 'import json,sys; v=[json.loads(l).get("peak_device_mib") for l in open(sys.argv[1])]; print(f"peak_device_mib {v[-1]} MiB"); sys.exit(0 if v[-1] and v[-1] > 0 else 1)' "$WORK/train-$tag.jsonl" 2>&1); then
                        note "train $tag: $out"
                    else fail "train $tag device memory: $out"; fi
                fi
                if [[ -n "$PY" && "$dtype" == bf16 ]]; then
                    if out=$(masters_f32 "$WORK/ckpt-$tag/state/trainable.safetensors" 2>&1); then
                        note "train $tag: $out"
                    else fail "train $tag masters: $out"; fi
                fi
            fi
            ref="$WORK/train-ref-cpu-$name-f32.jsonl"
            if [[ -n "$PY" && $side == dut && -f "$ref" && -f "$WORK/train-$tag.jsonl" ]]; then
                tolerance=0.05; [[ "$dtype" == f32 ]] && tolerance=0.01
                if out=$(train_parity "$ref" "$WORK/train-$tag.jsonl" "$tolerance" 2>&1); then
                    note "train parity $tag: $out"
                else fail "train parity $tag: $out"; fi
            fi
        done
    done
fi

# ---------------------------------------------------------------- throughput on a SmolLM2-135M shape
if want timing; then
    if [[ -z "$PY" ]]; then
        note "timing: skipped (needs python3 to write the random SmolLM2-135M-shaped model)"
    else
        S="$WORK/smollm2-random"; mkdir -p "$S"
        $PY - "$S" <<'EOF'
# SmolLM2-135M's shape (llama, 30 layers, hidden 576, GQA 9/3, vocab 49152, tied embeddings),
# random N(0, 0.02) weights (a 1 MiB random block tiled), f32 safetensors, a linear value head.
import json, os, random, struct, sys, array
out = sys.argv[1]
H, I, L, NH, KV, V = 576, 1536, 30, 9, 3, 49152
D = H // NH
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
       "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": NH,
       "num_key_value_heads": KV, "head_dim": D, "hidden_act": "silu", "rms_norm_eps": 1e-5,
       "rope_theta": 100000.0, "max_position_embeddings": 8192, "vocab_size": V,
       "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
       "torch_dtype": "float32"}
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
shapes = {"model.embed_tokens.weight": [V, H], "model.norm.weight": [H], "score.weight": [1, H]}
for l in range(L):
    p = f"model.layers.{l}."
    shapes.update({p + "input_layernorm.weight": [H], p + "post_attention_layernorm.weight": [H],
        p + "self_attn.q_proj.weight": [NH * D, H], p + "self_attn.k_proj.weight": [KV * D, H],
        p + "self_attn.v_proj.weight": [KV * D, H], p + "self_attn.o_proj.weight": [H, NH * D],
        p + "mlp.gate_proj.weight": [I, H], p + "mlp.up_proj.weight": [I, H],
        p + "mlp.down_proj.weight": [H, I]})
rng = random.Random(0)
block = array.array("f", (rng.gauss(0.0, 0.02) for _ in range(1 << 18))).tobytes()
ones = array.array("f", [1.0]).tobytes()
header, offset = {"__metadata__": {"format": "pt"}}, 0
for name, shape in shapes.items():
    n = 4
    for s in shape: n *= s
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
    offset += n
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h))); f.write(h)
    for name, shape in shapes.items():
        n = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
        if name.endswith("norm.weight"):
            f.write(ones * (n // 4))
        else:
            reps, rest = divmod(n, len(block))
            f.write(block * reps); f.write(block[:rest])
print(f"wrote {offset / 1e6:.0f} MB")
EOF
        GENS="${QRM_CHECK_TIMING_GENS:-$DIST/data/gens.parquet}"
        for dev in "$DEVICE" $([[ "${QRM_CHECK_TIMING_CPU:-0}" == 1 && "$DEVICE" != cpu ]] && echo cpu); do
            # warm-up: the driver JIT-compiles candle's PTX on first use (cached in ~/.nv)
            run_logged "timing warm-up ${dev//:/}" "$WORK/timing-warmup-${dev//:/}.log" \
                "$BIN/qrm-score" "$DATA/gens.jsonl" --rm "$S" --tokenizer "$FIX/tiny-tokenizer/tokenizer.json" \
                --template chatml --device "$dev" -q -o "$WORK/timing-warmup.jsonl" || continue
            for bt in ${QRM_CHECK_BATCH_TOKENS:-4096 16384}; do
                tag="${dev//:/}-bt$bt"
                if run_logged "timing $tag" "$WORK/timing-$tag.log" \
                    "$BIN/qrm-score" "$GENS" --rm "$S" --tokenizer "$FIX/tiny-tokenizer/tokenizer.json" \
                    --template chatml --device "$dev" --batch-tokens "$bt" -o "$WORK/timing-$tag.parquet"; then
                    note "timing $tag: $(grep -o 'scored .*tokens/s)' "$WORK/timing-$tag.log" | head -1)"
                fi
            done
        done
        note "timing: random SmolLM2-135M shape, character tokenizer (1 token per character), $(ls "$GENS" >/dev/null && echo "$GENS")"
    fi
fi

exit $FAILED
