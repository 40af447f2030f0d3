#!/usr/bin/env bash
# The GPU benchmark as one command for a machine without network (see scripts/gpu_bench.py).
#
#   bash scripts/gpu_bench.sh --out gpu_bench.md [any gpu_bench.py option]
#
# Packages the GPU image lacks travel as wheels in the git-ignored .whl/ folder (download them on a
# machine with network: python3 -m pip download --no-deps -d .whl diffusers==0.42.1 trimesh==5.2.0
# importlib_metadata; and xxhash, which makes trimesh's GLB export faster, built for the image's Python 3.12:
# python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
# --platform manylinux_2_17_x86_64 -d .whl xxhash==4.1.0). They are installed into /tmp/site without
# touching the image's packages.
# A hard timeout (GPU_BENCH_TIMEOUT_S, default 470 s) interrupts the script, which still prints the
# rows measured so far; its own budget (--budget-s, default 420 s) normally ends it well before.
set -u
cd "$(dirname "$0")/.."
SITE="${GPU_BENCH_SITE:-/tmp/site}"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl \
        || echo "[bench] installing the carried wheels failed; sections that need them will report errors"
else
    echo "[bench] no wheels in .whl/: diffusers/trimesh must already be installed"
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
python3 - <<'PY' || true
import importlib
for name in ("torch", "diffusers", "trimesh", "xxhash", "transformers", "huggingface_hub", "skimage", "scipy", "yaml"):
    try:
        module = importlib.import_module(name)
        print(f"[bench] {name} {getattr(module, '__version__', '?')}")
    except Exception as error:
        print(f"[bench] {name}: {type(error).__name__}: {error}")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/[bench] /'
timeout --signal=INT --kill-after=20 "${GPU_BENCH_TIMEOUT_S:-470}" python3 scripts/gpu_bench.py "$@"
