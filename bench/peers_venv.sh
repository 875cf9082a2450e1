#!/usr/bin/env bash
# Create the peers virtualenv (bench/.peers-venv) with Evidently 0.7.23 and pandas < 3.
#
# Evidently 0.7.x does not import with the project's pandas 3, so the drift peer runs in its
# own venv; the project's pins never move. Idempotent: a venv whose stamp matches the recipe
# is left alone. Usage: bash bench/peers_venv.sh [PYTHON]   (default python3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${PEERS_VENV:-$here/.peers-venv}"
python="${1:-${PYTHON:-python3}}"
recipe="evidently==0.7.23 pandas<3 pyarrow"
stamp="$venv/.recipe"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$recipe" ]]; then
    exit 0
fi
quiet() {
    # pip -q still warns about configured find-links folders that do not exist: drop that.
    "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
"$python" -m venv "$venv"
quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
# shellcheck disable=SC2086  # the recipe is a list of requirement specifiers
quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check $recipe
"$venv/bin/python" -c "import evidently, pandas; print('evidently', evidently.__version__, 'pandas', pandas.__version__)"
echo "$recipe" > "$stamp"
