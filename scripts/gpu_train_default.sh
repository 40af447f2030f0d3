#!/usr/bin/env bash
# Train the shipped default generator on one GPU within a wall-clock budget, then copy the newest
# checkpoint to OUT/model. SIGTERM at the budget makes the trainer save a checkpoint before it exits.
#   scripts/gpu_train_default.sh OUT [SECONDS] [key=value overrides...]
# On a machine without diffusers/trimesh, put their wheels in .whl/ (see scripts/gpu_bench.sh); without
# MiniLM, carry a text-embedding cache and point ATT3D_CACHE at it.
set -u
out=${1:?usage: gpu_train_default.sh OUT [SECONDS] [overrides...]}
budget=${2:-210}
shift $(( $# >= 2 ? 2 : 1 ))
if [ -d .whl ] && ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
start=$(date +%s)
timeout -s TERM "$budget" python3 -m att3d train configs/shapes_default.yaml --out "$out/run" device=cuda "$@"
echo "train exit $? after $(( $(date +%s) - start )) s"
python3 - "$out" <<'PY'
import shutil, sys
from pathlib import Path
from att3d.training.run_folder import latest_checkpoint
out = Path(sys.argv[1])
latest = latest_checkpoint(out / "run")
ckpt = latest[1] if latest else None
print("latest checkpoint:", ckpt)
if ckpt is not None:
    (out / "model").mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "manifest.json"):
        shutil.copy2(ckpt / name, out / "model" / name)
PY
