#!/usr/bin/env bash
# The paper's open questions on the params file's dataset (the demo by default), one after the
# other: stages, text, robustness, pointing. Extra arguments go to every `mccl experiment` call,
# e.g.  bash bench/demo_experiments.sh --no-tracking --set train.num_workers=8
# Results: $EXPERIMENTS_ROOT/<name>/<name>.{csv,md,png,json} (default outputs/experiments); models
# are trained once per configuration and shared between the experiments ($EXPERIMENTS_ROOT/models).
set -euo pipefail
python=${PYTHON:-python}
root=${EXPERIMENTS_ROOT:-outputs/experiments}
for experiment in stages text robustness pointing; do
  echo "=== mccl experiment $experiment $* ==="
  "$python" -m mccl_core.cli experiment "$experiment" --out "$root/$experiment" "$@"
done
