#!/usr/bin/env bash
# Run OpenRLHF's own bundled unit tests against the installed openrlhf, with our flash_attn CPU fallback active.
# A cheap upstream-compatibility check (CPU_ENV.md: 221 pass in about 10 s on CPU).
#
# The openrlhf wheel installs its tests as a top-level `tests` package in site-packages, and they load modules from an
# `openrlhf` folder next to that `tests` folder. Running them in place would let pytest pick up our pyproject.toml
# (strict markers, our testpaths) from an ancestor folder, so they run from a temporary copy with an `openrlhf` symlink
# beside it and a conftest.py that calls openrlhf_darts.compat.install(), the same route the product takes.
# Extra arguments go to pytest (e.g. `-k experience` or `-x`). Exits with pytest's status.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$PWD/.venv/bin/python}
site=$("$PY" -c 'import pathlib, openrlhf; print(pathlib.Path(openrlhf.__file__).resolve().parent.parent)')
[ -f "$site/tests/__init__.py" ] || { echo "[upstream] no bundled tests package next to openrlhf in $site" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/openrlhf_upstream_tests.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -r "$site/tests" "$work/tests"
find "$work/tests" -name __pycache__ -type d -prune -exec rm -rf {} +
ln -s "$site/openrlhf" "$work/openrlhf"
cat > "$work/conftest.py" <<'PY'
"""Activate the flash_attn CPU fallback for OpenRLHF's bundled tests (it stays inactive when flash_attn is installed)."""

from openrlhf_darts import compat

compat.install()
PY
active=$("$PY" -c 'from openrlhf_darts import compat; print(compat.install())')
echo "[upstream] openrlhf from $site, running in $work; flash_attn CPU fallback active: $active"
cd "$work"
start=$(date +%s)
status=0
"$PY" -m pytest -q -p no:cacheprovider -rfEs tests "$@" || status=$?
echo "[upstream] pytest exit status $status in $(( $(date +%s) - start )) s"
exit "$status"
