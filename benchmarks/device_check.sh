#!/usr/bin/env bash
# The GPU checks and benchmarks in one run, for a CUDA machine with seedvr-local's dependencies installed:
#
#   SEEDVR_REFERENCE_DIR=../shared/reference bash benchmarks/device_check.sh [OUT_DIR] [STEPS]
#
# STEPS (default "restore layout attention tests compile kernels memory video offload") picks what runs: restore is the
# baseline; layout (the contiguous VAE instead of channels-last) and attention (SDPA over window groups instead of
# packed varlen) rerun it with one change each; compile checks the compiled pipeline against eager, then times
# it. Each step has its own time limit and a failing step does not stop the next; logs and JSON land in OUT_DIR
# (default ./device-check), and in the archive $PACK (a .tar.gz path) when it is set.
# On an H100 (2026-11-26) the steps took: restore 48 s, layout 27 s, attention 21 s, tests 133 s, the compiled
# benchmark 178 s, kernels 6 s; memory did not finish in 60 s.
set -u
out=${1:-device-check}
steps=${2:-restore layout attention tests compile kernels memory video offload}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
# -v names every result as it lands, so a step cut off by its limit still says what passed and failed; a
# per-test timeout (pytest-timeout) turns a hang into one failure; xdist compiles Triton kernels in parallel.
pytest_flags="-v -rfE -p no:cacheprovider"
timeout_flag() { $python -c "import pytest_timeout" 2>/dev/null && echo "--timeout=$1"; }
$python -c "import xdist" 2>/dev/null && parallel="-n 8" || parallel=

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    case " $steps " in *" $name "*) ;; *) return 0 ;; esac
    echo "=== $name ($(date +%T), limit ${limit}s): $*"
    local started=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "=== $name: exit $? after $((SECONDS - started))s"
    grep -E "FAILED|ERROR" "$out/$name.log" | tail -n 20
    tail -n "${TAIL:-25}" "$out/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader
$python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

step restore 100 $python -m benchmarks.restore --model 3b-random --device cuda --dtype bf16 \
    --sizes 1920x1080,3840x2160 --factor 2 --repeat 3 --json "$out/restore.json" --profile "$out/profile.txt"
step layout 80 $python -m benchmarks.restore --model 3b-random --device cuda --dtype bf16 --sizes 1920x1080,3840x2160 \
    --factor 2 --repeat 3 --vae-layout contiguous --json "$out/layout.json"
step attention 60 $python -m benchmarks.restore --model 3b-random --device cuda --dtype bf16 --sizes 1920x1080 \
    --factor 2 --repeat 3 --attention sdpa --json "$out/attention.json"
step tests 150 $python -m pytest $pytest_flags $parallel $(timeout_flag 60) tests/test_cuda.py tests/test_kernels.py \
    tests/test_compact_weights.py -k "(cuda or Cuda) and not compiled"
# Compiling takes minutes (154 s for the 3B at 1080p on an H100): the compiled test runs alone, with a longer limit.
step compile 400 bash -c "$python -m pytest $pytest_flags $(timeout_flag 200) tests/test_cuda.py -k compiled \
    && $python -m benchmarks.restore --model 3b-random --device cuda --dtype bf16 --sizes 1920x1080 \
    --factor 2 --repeat 3 --compile --json $out/compile.json"
step kernels 60 $python -m benchmarks.kernels --device cuda --size 2160p --json "$out/kernels.json"
step memory 150 $python -m benchmarks.memory --device cuda --dtype bf16 --sizes 2048,3840x2160 \
    --tilings untiled,512/1 --timeout 30 --json "$out/memory.json"
# The video figures: 3B, bf16, 1080p output from 540p; one 121-frame clip, then a 10-second video (24 fps).
step video 400 bash -c "$python -m benchmarks.video --model 3b-random --device cuda --dtype bf16 --input 960x540 \
    --factor 2 --frames 121 --clip-frames 121 --json $out/video-clip.json \
    && $python -m benchmarks.video --model 3b-random --device cuda --dtype bf16 --input 960x540 --factor 2 \
    --frames 240 --fps 24 --clip-frames 121 --json $out/video-10s.json"
# Block swap: the 3B at 1080p resident, with half and all of its DiT blocks streamed, and fully offloaded: device
# memory, seconds, the same pixels as resident, and each streamed block's cost with the side-stream copy and without.
step offload 300 $python -m benchmarks.offload --model 3b-random --device cuda --dtype bf16 --size 1920x1080 \
    --json "$out/offload.json"

# One archive of everything (logs, JSON, the profile) for machines that hand back only a few files.
if [ -n "${PACK:-}" ]; then
    tar czf "$PACK" -C "$(dirname "$out")" "$(basename "$out")" && echo "=== packed into $PACK"
fi
