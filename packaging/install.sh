#!/usr/bin/env bash
# Install the appliance into ./.venv (created if missing).
#   bash packaging/install.sh         runtime install (editable: the daemon runs from this checkout)
#   bash packaging/install.sh test    the same, plus the test tools (then: bash packaging/test.sh)
# llama-cpp-python is built from source (about 11 minutes on 2 cores; pip caches the wheel).
# It is built with CUDA when nvcc and an NVIDIA driver are both present (APPLIANCE_CUDA=0|1 forces).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-runtime}"

py="${PYTHON:-python3}"
"$py" - <<'PY' || { echo "install: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)"; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

need_apt=()
"$py" -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v g++ >/dev/null || need_apt+=(g++)
command -v gcc >/dev/null || need_apt+=(gcc)
"$py" -c 'import sysconfig,os,sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")) else 1)' 2>/dev/null || need_apt+=(python3-dev)
if [ "$mode" = test ]; then
  # the image tests: a loopback OCI registry, skopeo to push to it, a static busybox to build
  # test images from (only on Debian-like systems; the tests say what is missing elsewhere)
  if command -v apt-get >/dev/null; then
    command -v docker-registry >/dev/null || need_apt+=(docker-registry)
    command -v skopeo >/dev/null || need_apt+=(skopeo)
    command -v umoci >/dev/null || need_apt+=(umoci)
    dpkg -s busybox-static >/dev/null 2>&1 || need_apt+=(busybox-static)
  fi
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${need_apt[@]}";
  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq "${need_apt[@]}";
  else echo "install: please install: ${need_apt[*]} (apt-get install ${need_apt[*]})"; exit 1; fi
fi

cuda="${APPLIANCE_CUDA:-auto}"
if [ "$cuda" = auto ]; then
  cuda=0
  if command -v nvcc >/dev/null && { [ -e /proc/driver/nvidia/version ] || nvidia-smi -L >/dev/null 2>&1; }; then cuda=1; fi
fi
if [ "$cuda" = 1 ]; then
  export CMAKE_ARGS="${CMAKE_ARGS:-} -DGGML_CUDA=on"
  echo "install: building llama-cpp-python with CUDA"
else
  echo "install: building llama-cpp-python for the CPU (first build takes ~11 min on 2 cores; cached after)"
fi

[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Both modes install the checkout editable, so the two commands install the package the same way.
# The daemon then runs from these files: running the test command (which reinstalls) while it
# serves leaves every file it reads in place, where replacing a regular install under it removed
# the sandbox drivers it copies into each sandbox ("Can't find source path .../python_driver.py").
if [ "$mode" = test ]; then
  .venv/bin/python -m pip install --progress-bar off -e '.[test]'
else
  .venv/bin/python -m pip install --progress-bar off -e .
fi
# pip reuses a cached wheel whatever CMAKE_ARGS say, so a CPU-only build made before CUDA was
# installed would stay. Rebuild it, bypassing the cache, when this machine should offload.
if [ "$cuda" = 1 ] && ! .venv/bin/python -c 'import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)' 2>/dev/null; then
  echo "install: the installed llama-cpp-python cannot offload to the GPU; rebuilding it with CUDA"
  .venv/bin/python -m pip install --progress-bar off --no-cache-dir --force-reinstall --no-deps llama-cpp-python
fi
if [ "$mode" = test ]; then echo "install: done. Run: bash packaging/test.sh";
else echo "install: done. Run: .venv/bin/appliance serve"; fi
