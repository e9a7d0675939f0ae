#!/usr/bin/env bash
# Create the virtual environment .venv with vqnqs (editable) and its pinned dependencies.
#
# torch: if the Python that creates the venv already has torch (say, a CUDA build on a GPU box), the
# venv sees it (--system-site-packages) and nothing replaces it. Otherwise torch==$TORCH_VERSION is
# installed; where pip's find-links holds the CPU wheel of that version (as on the project's CPU
# machines) pip takes that file instead of downloading several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
    if "$PYTHON" -c "import torch" 2>/dev/null; then
        echo "setup: using the torch already installed for $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
fi
"$VENV/bin/python" -m pip install --quiet -c requirements.lock -e ".[dev]"
"$VENV/bin/python" -c "import torch, vqnqs; print(f'setup: vqnqs {vqnqs.__version__}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}')"
