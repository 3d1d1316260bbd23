#!/usr/bin/env bash
# The formatters and the linter: ruff (lint + format) for Python, configured in
# pyproject.toml, and clang-format for the C core and the C example, configured in
# .clang-format.
#
#   .ci/format.sh --check   # CI: changes nothing; fails and names the files that differ
#   .ci/format.sh --fix     # rewrites the files in place (then review and commit)
#
# The versions are pinned: a formatter's output changes between releases, and a check must
# give the same answer on every machine. They are installed into the active Python
# environment when it lacks them (PYTHON picks the interpreter, as in the other scripts).
set -euo pipefail
cd "$(dirname "$0")/.."
RUFF_VERSION=0.17.6
CLANG_FORMAT_VERSION=23.1.5
PY=${PYTHON:-python3}

mode=${1:-}
case "$mode" in
    --check|--fix) ;;
    *) echo "usage: .ci/format.sh --check | --fix" >&2; exit 2 ;;
esac

BIN=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
have() { [ -x "$BIN/$1" ] && "$BIN/$1" --version 2>/dev/null | grep -qwF -- "$2"; }
if ! have ruff "$RUFF_VERSION" || ! have clang-format "$CLANG_FORMAT_VERSION"; then
    "$PY" -m pip install -q "ruff==$RUFF_VERSION" "clang-format==$CLANG_FORMAT_VERSION"
fi
RUFF="$BIN/ruff"
CLANG_FORMAT="$BIN/clang-format"

# the C files git knows (build outputs and the copies other scripts make are not formatted);
# csrc/ops/ops.def is a table of X-macro rows laid out by hand, not a C file
mapfile -t C_FILES < <(git ls-files 'csrc/*.c' 'csrc/*.h' 'examples/*.c' 'examples/*.h')

rc=0
if [ "$mode" = --check ]; then
    echo "== ruff check (lint)"
    "$RUFF" check --output-format concise . || rc=1
    echo "== ruff format --check"
    "$RUFF" format --check --output-format concise . || rc=1
    echo "== clang-format --dry-run (${#C_FILES[@]} files)"
    n=0
    for f in "${C_FILES[@]}"; do
        # one line a file (clang-format itself prints every differing line)
        if ! "$CLANG_FORMAT" --dry-run --Werror "$f" >/dev/null 2>&1; then
            echo "   would reformat $f"; n=$((n + 1))
        fi
    done
    [ "$n" -eq 0 ] || { echo "$n C file(s) would be reformatted"; rc=1; }
    [ "$rc" -eq 0 ] && echo "== formatted: nothing to change"
    [ "$rc" -eq 0 ] || echo "format: run .ci/format.sh --fix (then review the diff)" >&2
else
    "$RUFF" check --fix . || rc=1   # what it cannot fix is listed, and the run fails
    "$RUFF" format .
    "$CLANG_FORMAT" -i "${C_FILES[@]}"
    echo "== formatted; review with git diff"
fi
exit $rc
