# Source this file to build (once) and activate the project's virtual environment.
# The environment is cached outside the clone, keyed by a hash of requirements.txt, so clones share it and a
# change of requirements builds a fresh one. Override the cache folder with MAEDFER_VENV_CACHE. Builds that start at
# the same time (two clones, CI beside a user) take turns on a lock: the second one finds the first one's.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_key=$(sha256sum "$_root/requirements.txt" | cut -c1-16)
_venv="${MAEDFER_VENV_CACHE:-$HOME/.cache/mae-dfer-venvs}/$_key"
if [ ! -f "$_venv/.complete" ]; then
    mkdir -p "$(dirname "$_venv")"
    (
        flock 9
        [ -f "$_venv/.complete" ] && exit 0
        echo "building the virtual environment $_venv (first run only; torch is several GB)" >&2
        rm -rf "$_venv"
        python3 -m venv "$_venv" || exit 1
        "$_venv/bin/python" -m pip install --quiet --upgrade pip > "$_venv.log" 2>&1 \
            && "$_venv/bin/python" -m pip install --quiet -r "$_root/requirements.txt" >> "$_venv.log" 2>&1 \
            || { cat "$_venv.log" >&2; echo "pip install failed (log above)" >&2; exit 1; }
        touch "$_venv/.complete"
    ) 9> "$_venv.lock" || return 1
fi
export PATH="$_venv/bin:$PATH"
unset _root _key _venv
