#!/usr/bin/env bash
# CUDA smoke check, for a GPU machine that has python3 with torch but no internet (the device tool's machines).
#
# Here, with network:   bash benchmarks/cuda_check.sh prepare   (wheels for hydra/omegaconf, and the data cache,
#                       into .device/, which git ignores through .git/info/exclude)
# There, with .device/ carried:   bash benchmarks/cuda_check.sh
#
# It runs the collab recipe twice on the auto device (CUDA), once on the CPU, the MNIST mlp with torch and with
# scratch optimizer and loss, a diverging run, and checks the lean optimizer step against opt.step on CUDA.
set -u
if [ "${1:-}" = prepare ]; then
  mkdir -p .device/wheels .device/cache
  grep -qx ".device/" .git/info/exclude || echo ".device/" >> .git/info/exclude
  .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .device/wheels \
    "hydra-core>=1.3.8,<1.4" "omegaconf>=2.3,<2.4"
  .venv/bin/pip download -q --no-deps -d .device/wheels "antlr4-python3-runtime==4.9.3"
  cp -r "${LESSON5_CACHE:-$HOME/.cache/lesson5}"/{ml-100k,mnist-5k} .device/cache/
  exit
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation .device/wheels/* 2>&1 | tail -2
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
export LESSON5_CACHE=$PWD/.device/cache PYTHONPATH=$PWD COLUMNS=160
run() { echo "== $1"; shift; python3 -m lesson5 tracking=none trainer.progress=false "$@" 2>&1 \
          | grep -E "valid_rmse|valid_accuracy|train_seconds|rror"; echo "exit ${PIPESTATUS[0]}"; }
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
run "collab recipe, auto device, run 1"
run "collab recipe, auto device, run 2"
run "collab recipe, cpu, 1 epoch" trainer.device=cpu trainer.epochs=1
run "mlp on mnist-5k, auto" model=mlp data=mnist optim.lr=1e-2 optim.wd=0 trainer.epochs=10
run "mlp, scratch Adam and loss, auto" model=mlp data=mnist optim.impl=scratch loss.impl=scratch optim.lr=1e-2 \
    optim.wd=0 trainer.epochs=10
run "diverging SGD lr=100 (must exit 2)" model=mlp data=mnist optim=sgd optim.lr=100
python3 - <<'PY'
import torch
from lesson5 import optim
from lesson5.components import OPTIMIZERS
from lesson5.config import OptimConf, WdMode
ok = True
for name in OPTIMIZERS:
    for mode in WdMode:
        trajs = []
        for lean in (True, False):
            torch.manual_seed(0)
            m = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).cuda()
            x, y = torch.randn(64, 6, device="cuda"), torch.randint(0, 3, (64,), device="cuda")
            conf = OptimConf(name=name, lr=1e-2, wd=0.1, wd_mode=mode, momentum=0.9, sqr_mom=0.99, eps=1e-5)
            opt = optim.build(conf, [list(m.parameters())], [conf.lr])
            step = optim.stepper(opt) if lean else opt.step
            for _ in range(50):
                torch.nn.functional.cross_entropy(m(x), y).backward()
                step()
                opt.zero_grad(set_to_none=True)
            trajs.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
        ok &= torch.equal(*trajs)
print("lean optimizer step == opt.step on CUDA, every optimizer and wd mode:", ok)
PY
