#!/usr/bin/env bash
# Run HERE (the CPU machine): gathers what a bare GPU machine lacks into .gpu/ (git-ignored), to be
# named in the device tool's `carry`. The machine has python3.12 with torch and transformers, but
# no gymnasium/SB3, no network, and a 64 MiB carry limit.
#   - wheels of the pure-Python packages it lacks;
#   - the packaged all-MiniLM-L6-v2 as an fp16 safetensors copy (the fp32 file is 91 MB; setup.sh
#     turns it back into fp32 there, so every model starts from fp32 weights as here);
#   - the GLUE TSVs of the tasks given (default MRPC); they stay out of git.
# Usage: bash bench/gpu/pack.sh [TASK_FOLDER ...]     (e.g. MRPC STS-B)
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
GLUE=${KDENV_GLUE_DIR:-../shared/data/glue}
rm -rf .gpu && mkdir -p .gpu/whl .gpu/glue .gpu/minilm-fp16
for package in gymnasium==1.4.0 farama-notifications==0.0.6 stable-baselines3==2.9.2 sb3-contrib==2.9.2; do
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl "$package"
done
python - <<'PY'
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kdenv.engine.models import packaged_model_dir

source, target = packaged_model_dir(), Path(".gpu/minilm-fp16")
tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(source / "model.safetensors").items()}
save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copy(source / name, target / name)
print("fp16 MiniLM:", sum(f.stat().st_size for f in target.iterdir()) // 2**20, "MiB")
PY
for task in "${@:-MRPC}"; do cp -r "$GLUE/$task" .gpu/glue/; done
cp "$GLUE/README.md" .gpu/glue/
du -sh .gpu
