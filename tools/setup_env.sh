#!/usr/bin/env bash
# Create .venv at the repository root and install uniperceiver (editable) with its test extras.
#
#   bash tools/setup_env.sh            # CPU machine (pins the torch build that lies on local disk)
#   TORCH_SPEC="" bash tools/setup_env.sh   # keep whatever torch the venv already has (GPU users)
#
# The torch pin is this machine's fact, not a requirement of the package: setup.py accepts a wide
# range so GPU clusters keep their own CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
if [ -n "$TORCH_SPEC" ]; then
    # shellcheck disable=SC2086
    .venv/bin/python -m pip install -q $TORCH_SPEC
fi
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import uniperceiver, torch; print('uniperceiver', uniperceiver.__version__, 'torch', torch.__version__)"
# Byte-compile the package (pip compiles site-packages, not an editable install): with PYTHONDONTWRITEBYTECODE set,
# as in many containers, every process would otherwise compile the modules it imports again (all of them: 0.3 s here;
# the tests start several hundred processes).  A changed source file is recompiled at import as usual.
.venv/bin/python -m compileall -q uniperceiver tools main.py > /dev/null
# DeepSpeed builds its CPU shared-memory collective op on first use (~1 min on 2 cores); build it now, where the
# tests and CPU runs look for it (tests/test_deepspeed.py: TORCH_EXTENSIONS_DIR).  Optional: without a C++
# compiler DeepSpeed builds nothing and falls back to torch.distributed.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/uniperceiver/torch_extensions}
DS_ACCELERATOR=cpu .venv/bin/python -c "
from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
ShareMemCommBuilder().load(verbose=False)
print('deepspeed: shared-memory comm op built in', '$TORCH_EXTENSIONS_DIR')" 2>/dev/null \
    || echo "deepspeed: shared-memory comm op not built here (it builds on first use, or DeepSpeed does without)"
