#!/usr/bin/env bash
# Install LatentSync MEMSAFE's requirements into ComfyUI's Python, without touching its torch, then fetch the
# checkpoints (resumable; skipped when offline or with SKIP_DOWNLOAD=1) and report what works.
#
#   ./install_for_comfyui.sh [PATH_TO_COMFYUI_PYTHON]
#
# Without an argument the Python is, in this order: $COMFYUI_PYTHON; ComfyUI's python_embeded, venv or .venv
# next to custom_nodes/; the Python of a running ComfyUI (main.py) started from that folder; the active
# virtual environment. Checkpoints go to ComfyUI's models/latentsync (or $LATENTSYNC_CHECKPOINTS).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
COMFY_ROOT=""
if [ "$(basename "$(dirname "$HERE")")" = "custom_nodes" ] && [ -f "$(dirname "$(dirname "$HERE")")/main.py" ]; then
    COMFY_ROOT="$(cd "$HERE/../.." && pwd)"
fi

find_python() {
    if [ -n "${1:-}" ]; then echo "$1"; return; fi
    if [ -n "${COMFYUI_PYTHON:-}" ]; then echo "$COMFYUI_PYTHON"; return; fi
    if [ -n "$COMFY_ROOT" ]; then
        for candidate in "$COMFY_ROOT/../python_embeded/python" "$COMFY_ROOT/python_embeded/python" \
                         "$COMFY_ROOT/venv/bin/python" "$COMFY_ROOT/.venv/bin/python"; do
            if [ -x "$candidate" ]; then echo "$candidate"; return; fi
        done
        # a running ComfyUI started from this folder: use the interpreter it runs on
        for pid in $(pgrep -f "main.py" 2>/dev/null || true); do
            if [ "$(readlink -f "/proc/$pid/cwd" 2>/dev/null)" = "$COMFY_ROOT" ] && [ -x "/proc/$pid/exe" ]; then
                readlink -f "/proc/$pid/exe"; return
            fi
        done
    fi
    if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then echo "$VIRTUAL_ENV/bin/python"; return; fi
    echo ""
}

PY="$(find_python "${1:-}")"
if [ -z "$PY" ]; then
    echo "Could not find ComfyUI's Python. Run: $0 /path/to/ComfyUI's/python" >&2
    exit 2
fi
echo "Using ComfyUI's Python: $PY"

TORCH="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [ -z "$TORCH" ]; then
    echo "torch is not installed in $PY. Install ComfyUI (with the torch build for your GPU) first, or pass the" \
         "right Python as the first argument." >&2
    exit 2
fi
echo "Keeping its torch $TORCH"

CONSTRAINTS="$(mktemp "${TMPDIR:-/tmp}/latentsync-constraints.XXXXXX")"
trap 'rm -f "$CONSTRAINTS"' EXIT
"$PY" - "$CONSTRAINTS" <<'EOF'
import sys
from importlib import metadata

with open(sys.argv[1], "w") as out:
    for name in ("torch", "torchvision", "torchaudio", "xformers"):
        try:
            out.write(f"{name}=={metadata.version(name)}\n")
        except metadata.PackageNotFoundError:
            pass
EOF

"$PY" -m pip install -r "$HERE/requirements.txt" -c "$CONSTRAINTS"

# onnxruntime (InsightFace's detector): an installed build is kept (the CPU package beside onnxruntime-gpu would break
# its CUDA provider); without one, onnxruntime-gpu where torch sees CUDA, onnxruntime elsewhere
ORT="$(cd "$HERE" && "$PY" -m latentsync.tools.choose_onnxruntime)"
if [ -n "$ORT" ]; then
    "$PY" -m pip install "$ORT" -c "$CONSTRAINTS"
else
    echo "Keeping the installed onnxruntime build"
fi

AFTER="$("$PY" -c 'import torch; print(torch.__version__)')"
if [ "$AFTER" != "$TORCH" ]; then
    echo "WARNING: torch changed from $TORCH to $AFTER; reinstall ComfyUI's torch build." >&2
    exit 1
fi

CHECKPOINTS="${LATENTSYNC_CHECKPOINTS:-}"
if [ -z "$CHECKPOINTS" ]; then
    if [ -n "$COMFY_ROOT" ]; then CHECKPOINTS="$COMFY_ROOT/models/latentsync"; else CHECKPOINTS="$HERE/checkpoints"; fi
fi
if [ "${SKIP_DOWNLOAD:-0}" = "1" ]; then
    echo "SKIP_DOWNLOAD=1: not downloading checkpoints"
elif "$PY" -c "import socket; socket.create_connection(('huggingface.co', 443), timeout=5).close()" 2>/dev/null; then
    echo "Downloading checkpoints into $CHECKPOINTS (resumable: run again if it stops)"
    (cd "$HERE" && "$PY" -m latentsync.checkpoints download --version 1.6 --dir "$CHECKPOINTS") || \
        echo "WARNING: the download did not finish; run this script again to resume." >&2
else
    echo "Offline: not downloading. Later run: (cd \"$HERE\" && \"$PY\" -m latentsync.checkpoints download --dir \"$CHECKPOINTS\")"
fi

if [ -f "$HERE/verify_installation.py" ]; then
    (cd "$HERE" && "$PY" verify_installation.py --checkpoints "$CHECKPOINTS") || true
fi
echo "Done. Restart ComfyUI; the nodes are under LatentSync (template: LatentSync lip sync)."
