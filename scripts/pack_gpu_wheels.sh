#!/usr/bin/env bash
# Packs the wheels a CUDA machine without network needs to run `make gpu` (docs/gpu.md): its image has
# PyTorch and Triton but an older transformers. Downloads, for CPython 3.12 on x86-64 Linux and at the
# versions constraints.txt pins, transformers and the packages around it, then checks that the folder fits
# the 64 MiB a device call carries.
#
#   scripts/pack_gpu_wheels.sh [DEST]     # default build/gpu_wheels (ignored by git); WITH_AV=0 leaves PyAV out
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/build/gpu_wheels}
python=${PYTHON:-$root/.venv/bin/python}
limit_mib=64
# transformers 5.23 needs huggingface_hub >= 1.31, tokenizers >= 0.23.1, safetensors >= 0.8, regex; the hub
# release we test with (2.x) needs hf-xet and httpx2/httpcore2. peft and accelerate for the LoRA step, PyAV
# for tcllava's video reading (not used by benchmarks/gpu.py).
packages=(transformers tokenizers safetensors huggingface_hub hf-xet httpx2 httpcore2 peft accelerate regex)
if [ "${WITH_AV:-1}" = 1 ]; then packages+=(av); fi

rm -rf "$dest"
mkdir -p "$dest"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$dest" \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -c "$root/constraints.txt" "${packages[@]}"

ls -l "$dest"
bytes=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
# A device call also sends the working tree: tracked files and untracked ones that git does not ignore.
tree=$(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
total=$((bytes + tree))
echo "wheels: $((bytes / 1024)) KiB in $dest; with the working tree: $((total / 1024)) KiB (limit ${limit_mib} MiB)"
if [ "$total" -gt $((limit_mib * 1024 * 1024)) ]; then
    echo "pack_gpu_wheels.sh: wheels and working tree exceed ${limit_mib} MiB; try WITH_AV=0" >&2
    exit 1
fi
