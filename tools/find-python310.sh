#!/usr/bin/env bash
# Print the path of a Python 3.10 interpreter (Lava 0.10.0 imports only on 3.10).
# Order: $SNN2HW_PYTHON, python3.10 on PATH, pyenv's 3.10.x.
set -u
try() { "$1" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && { echo "$1"; exit 0; }; }
[ -n "${SNN2HW_PYTHON:-}" ] && try "$SNN2HW_PYTHON"
command -v python3.10 >/dev/null 2>&1 && try "$(command -v python3.10)"
if command -v pyenv >/dev/null 2>&1 || [ -x "$HOME/.pyenv/bin/pyenv" ]; then
  PYENV=$(command -v pyenv || echo "$HOME/.pyenv/bin/pyenv")
  for v in $("$PYENV" versions --bare 2>/dev/null | grep -E '^3\.10(\.|$)' | sort -V -r); do
    try "$("$PYENV" prefix "$v")/bin/python3.10"
  done
fi
echo "snn2hw: no Python 3.10 found (Lava needs it). Install one (e.g. 'pyenv install 3.10') or set SNN2HW_PYTHON." >&2
exit 1
