#!/usr/bin/env bash
# Checks every shell script in the repository: bash -n (syntax), then shellcheck (installed
# from Debian when missing). `make shellcheck`; part of `make test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v shellcheck >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || { echo "shellcheck is missing (Debian: apt-get install shellcheck)" >&2; exit 1; }
    echo "[shellcheck] installing shellcheck from Debian" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
fi

mapfile -t scripts < <(git ls-files -- '*.sh' 2>/dev/null || find . -name '*.sh' -not -path './target/*')
# Files git does not know yet (a script just written) are checked too.
mapfile -t -O "${#scripts[@]}" scripts < <(git ls-files --others --exclude-standard -- '*.sh' 2>/dev/null)
for script in "${scripts[@]}"; do
    bash -n "$script"
done
shellcheck -x "${scripts[@]}"
echo "[shellcheck] ${#scripts[@]} scripts: bash -n and shellcheck clean" >&2
