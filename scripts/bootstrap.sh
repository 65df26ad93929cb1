#!/usr/bin/env bash
# Set up everything the project needs, idempotently (a second call takes a few seconds):
#
#   1. system libraries  EGL/GL (MuJoCo offscreen rendering, OpenCV) and the Vulkan loader + Mesa runtime
#                        (apt-get install as root; otherwise the exact apt command is printed)
#   2. python venv       .venv, made with python3.11 (override: RELAM_PYTHON=/path/to/python)
#   3. python packages   pip install -c constraints.txt -r requirements.lock, then pip install --no-deps -e .
#                        (only when .venv/.relam-stamp differs from sha256 of lock + constraints + pyproject)
#   4. Vulkan driver     ManiSkill/SAPIEN need a Vulkan device. If none works (Debian 12's Mesa 22 lavapipe is
#                        rejected), Mesa 25 lavapipe from bookworm-backports is unpacked into .cache/mesa
#                        (private apt state + apt-get download + dpkg -x; the system is not changed).
#                        A VK_ICD_FILENAMES set by the user (e.g. a GPU driver) is always respected.
#   5. env file          .venv/relam-env.sh (MUJOCO_GL, PYOPENGL_PLATFORM, VK_ICD_FILENAMES, PATH, ...)
#                        followed by a render check (MuJoCo EGL, SAPIEN Vulkan, OpenCV import).
#
# Usage: scripts/bootstrap.sh [--relock] [--skip-checks]
#   --relock       regenerate requirements.lock from requirements.txt (+ constraints.txt) in a scratch venv,
#                  then install it.
#   --skip-checks  skip the render check of step 5 (also: RELAM_SKIP_CHECKS=1).
# Other knobs: RELAM_PYTHON, RELAM_MESA_DIR (default .cache/mesa), RELAM_MESA_VERSION (default
# 25.0.7-2~bpo12+1), RELAM_SKIP_SYSTEM_CHECK=1, RELAM_SKIP_VULKAN=1 (Meta-World only, no ManiSkill).
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
CACHE="$REPO/.cache"
MESA_DIR="${RELAM_MESA_DIR:-$CACHE/mesa}"
MESA_VERSION="${RELAM_MESA_VERSION:-25.0.7-2~bpo12+1}"
STAMP="$VENV/.relam-stamp"
ENV_FILE="$VENV/relam-env.sh"
START_TS=$SECONDS

RELOCK=0
SKIP_CHECKS="${RELAM_SKIP_CHECKS:-0}"
for arg in "$@"; do
    case "$arg" in
        --relock) RELOCK=1 ;;
        --skip-checks) SKIP_CHECKS=1 ;;
        -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "[bootstrap] ERROR: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

STEP="start"
log()  { printf '[bootstrap] %s\n' "$*" >&2; }
warn() { printf '[bootstrap] WARNING: %s\n' "$*" >&2; }
# die "what failed" "how to fix it"
die() {
    printf '[bootstrap] ERROR in step "%s": %s\n' "$STEP" "$1" >&2
    [ -n "${2:-}" ] && printf '[bootstrap] fix: %s\n' "$2" >&2
    exit 1
}
# shellcheck disable=SC2154  # rc is assigned inside the trap
trap 'rc=$?; printf "[bootstrap] ERROR in step \"%s\": command failed (exit %s) at scripts/bootstrap.sh line %s: %s\n" "$STEP" "$rc" "$LINENO" "$BASH_COMMAND" >&2; exit $rc' ERR

mkdir -p "$CACHE"
CLEANUP=()
cleanup() { local d; for d in "${CLEANUP[@]}"; do rm -rf "$d"; done; rm -f "$ENV_FILE.tmp" "$REPO/requirements.lock.tmp"; }
trap cleanup EXIT
# Serialise concurrent bootstraps (e.g. run_tests.sh and run_all.sh started together).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/bootstrap.lock"
    if ! flock -n 9; then
        log "another bootstrap is running in this checkout; waiting for it ..."
        flock 9
    fi
fi

is_root() { [ "$(id -u)" -eq 0 ]; }
LDCONFIG="$(command -v ldconfig || echo /sbin/ldconfig)"   # /sbin is not on a normal user's PATH
have_lib() { "$LDCONFIG" -p 2>/dev/null | awk -v lib="$1" '$1 == lib { found = 1 } END { exit !found }'; }
have_file_glob() { compgen -G "$1" >/dev/null 2>&1; }
pkg_installed() {
    command -v dpkg-query >/dev/null 2>&1 || return 1
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

# ---------------------------------------------------------------------------------------------------------
STEP="1/5 system libraries"
# Debian package | how to tell it is there without dpkg (soname in the ldconfig cache, or a file glob)
SYSTEM_REQS=(
    "libegl1|lib:libEGL.so.1"                                  # EGL loader (glvnd): MuJoCo MUJOCO_GL=egl
    "libegl-mesa0|lib:libEGL_mesa.so.0"                        # Mesa EGL vendor (software llvmpipe)
    "libopengl0|lib:libOpenGL.so.0"                            # PyOpenGL's GL under PYOPENGL_PLATFORM=egl
    "libgl1-mesa-dri|file:/usr/lib/*/dri/swrast_dri.so"        # llvmpipe DRI driver used by Mesa EGL
    "libgl1|lib:libGL.so.1"                                    # cv2 (opencv-python) links libGL.so.1
    "libglib2.0-0|lib:libgthread-2.0.so.0"                     # cv2 links libgthread/libglib
    "libvulkan1|lib:libvulkan.so.1"                            # Vulkan loader (SAPIEN / ManiSkill)
    "mesa-vulkan-drivers|lib:libLLVM-15.so.1"                  # pulls libLLVM-15 + xcb libs lavapipe 25 needs
)
if [ "${RELAM_SKIP_SYSTEM_CHECK:-0}" = 1 ]; then
    log "step $STEP: skipped (RELAM_SKIP_SYSTEM_CHECK=1)"
else
    missing=()
    for req in "${SYSTEM_REQS[@]}"; do
        pkg="${req%%|*}"; probe="${req#*|}"
        pkg_installed "$pkg" && continue
        case "$probe" in
            lib:*) have_lib "${probe#lib:}" && continue ;;
            file:*) have_file_glob "${probe#file:}" && continue ;;
        esac
        missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "step $STEP: ok (EGL/GL, Vulkan loader, Mesa runtime present)"
    else
        apt_cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
        if ! command -v apt-get >/dev/null 2>&1; then
            die "missing system libraries (Debian package names): ${missing[*]}" \
                "install your distribution's equivalents (EGL + libOpenGL + Mesa DRI, libGL, glib, Vulkan loader + Mesa Vulkan drivers), or set RELAM_SKIP_SYSTEM_CHECK=1 if you know they are present"
        fi
        if ! is_root; then
            die "missing system packages: ${missing[*]}" "run as root:  sudo sh -c '$apt_cmd'  then re-run scripts/bootstrap.sh"
        fi
        log "step $STEP: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q || die "apt-get update failed" "check network access to your Debian mirror, then run: $apt_cmd"
        apt-get install -y -q --no-install-recommends "${missing[@]}" \
            || die "apt-get install failed" "run by hand and read apt's message: $apt_cmd"
    fi
fi

# ---------------------------------------------------------------------------------------------------------
STEP="2/5 python venv"
PY="$VENV/bin/python"
if [ -e "$VENV" ] && [ ! -x "$PY" ]; then
    die "$VENV exists but has no working bin/python" "remove it (rm -rf .venv) and re-run scripts/bootstrap.sh"
fi
pick_python() {
    if [ -n "${RELAM_PYTHON:-}" ]; then command -v "$RELAM_PYTHON"; return; fi
    if command -v python3.11 >/dev/null 2>&1; then command -v python3.11; return; fi
    if command -v python3 >/dev/null 2>&1 && python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
        command -v python3; return
    fi
    return 1
}
if [ ! -x "$PY" ]; then
    if [ -n "${RELAM_PYTHON:-}" ] && ! command -v "$RELAM_PYTHON" >/dev/null 2>&1; then
        die "RELAM_PYTHON=$RELAM_PYTHON is not an executable" "set RELAM_PYTHON to a Python 3.11 interpreter, or unset it"
    fi
    BASE_PY="$(pick_python)" || die "no Python 3.11 found (requirements.lock was made with 3.11)" \
        "install it (Debian 12: apt-get install python3.11 python3.11-venv) or set RELAM_PYTHON=/path/to/python3.11"
    log "step $STEP: creating .venv with $BASE_PY ($("$BASE_PY" -V 2>&1))"
    "$BASE_PY" -m venv "$VENV" || { rm -rf "$VENV"; die "'$BASE_PY -m venv .venv' failed" \
        "Debian/Ubuntu system Python needs the venv module: apt-get install python3.11-venv"; }
else
    log "step $STEP: ok (.venv exists, $("$PY" -V 2>&1))"
fi
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || warn ".venv uses $("$PY" -V 2>&1); requirements.lock was made with Python 3.11 and may not install"

# ---------------------------------------------------------------------------------------------------------
if [ "$RELOCK" = 1 ]; then
    STEP="3/5 relock"
    RELOCK_VENV="$CACHE/relock-venv"
    log "step $STEP: resolving requirements.txt with constraints.txt in a scratch venv ($RELOCK_VENV)"
    rm -rf "$RELOCK_VENV"
    CLEANUP+=("$RELOCK_VENV")
    "$("$PY" -c 'import sys; print(sys._base_executable)')" -m venv "$RELOCK_VENV"
    "$RELOCK_VENV/bin/python" -m pip install --progress-bar off -c "$REPO/constraints.txt" -r "$REPO/requirements.txt" \
        || die "pip could not install requirements.txt with constraints.txt" "read pip's message above; adjust requirements.txt (requirements.lock is unchanged)"
    {
        echo "# Exact versions of the whole environment (pip freeze of a working .venv; torch's local tag dropped"
        echo "# so a CUDA machine gets its own build of the same version). Regenerate: scripts/bootstrap.sh --relock"
        "$RELOCK_VENV/bin/python" -m pip freeze --exclude-editable \
            | sed -E 's/^(torch==[^+]+)\+.*$/\1/' | grep -v -i -E '^relam([=@ ]|$)'
    } > "$REPO/requirements.lock.tmp"
    mv "$REPO/requirements.lock.tmp" "$REPO/requirements.lock"
    rm -rf "$RELOCK_VENV"
    log "step $STEP: wrote requirements.lock ($(grep -c -v '^#' "$REPO/requirements.lock") packages)"
fi

STEP="3/5 python packages"
for f in requirements.lock constraints.txt pyproject.toml; do
    [ -f "$REPO/$f" ] || die "$f is missing" "restore it from git (git checkout -- $f)"
done
want_stamp="$(cat "$REPO/requirements.lock" "$REPO/constraints.txt" "$REPO/pyproject.toml" | sha256sum | cut -d' ' -f1)"
have_stamp="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want_stamp" = "$have_stamp" ]; then
    log "step $STEP: ok (up to date with requirements.lock, stamp ${want_stamp:0:12})"
else
    log "step $STEP: installing requirements.lock into .venv (first time: several minutes)"
    t0=$SECONDS
    rm -f "$STAMP"
    pip_log="$CACHE/bootstrap-pip.log"
    if ! "$PY" -m pip install --progress-bar off -c "$REPO/constraints.txt" -r "$REPO/requirements.lock" 2>&1 | tee "$pip_log"; then
        if grep -q 'Requires-Python' "$pip_log"; then
            die "pip install -c constraints.txt -r requirements.lock failed: a locked version needs a newer Python than .venv's $("$PY" -V 2>&1) (see 'Requires-Python' above)" \
                "rm -rf .venv and re-run with a newer Python 3.11 (RELAM_PYTHON=/path/to/python3.11; Debian 12's own is 3.11.2), or relock for this Python: scripts/bootstrap.sh --relock"
        fi
        die "pip install -c constraints.txt -r requirements.lock failed (log: ${pip_log#"$REPO"/})" \
            "read pip's message above (network/index access to PyPI?); re-run scripts/bootstrap.sh"
    fi
    "$PY" -m pip install --progress-bar off --no-deps -e "$REPO" \
        || die "pip install --no-deps -e . failed" "check pyproject.toml; pip needs setuptools>=64 from the index for the build"
    "$PY" -m pip check >/dev/null 2>&1 || warn "pip check reports conflicts: run '.venv/bin/python -m pip check'"
    echo "$want_stamp" > "$STAMP"
    log "step $STEP: done in $((SECONDS - t0))s"
fi

# ---------------------------------------------------------------------------------------------------------
STEP="4/5 vulkan driver"
LVP_JSON="$MESA_DIR/lvp_icd.json"

# True when $LVP_JSON exists and points at an existing library.
lvp_json_ok() {
    [ -f "$LVP_JSON" ] || return 1
    local lib
    lib="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["ICD"]["library_path"])' "$LVP_JSON" 2>/dev/null)" || return 1
    [ -f "$lib" ]
}

# Write $LVP_JSON from the unpacked package's icd json, with library_path made absolute.
write_lvp_json() {
    local pkgdir="$1" src lib
    src="$(find "$pkgdir/usr/share/vulkan/icd.d" -name 'lvp_icd*.json' 2>/dev/null | head -n1)"
    lib="$(find "$pkgdir/usr/lib" -name 'libvulkan_lvp.so' 2>/dev/null | head -n1)"
    [ -n "$src" ] && [ -n "$lib" ] || return 1
    "$PY" - "$src" "$lib" "$LVP_JSON.tmp" <<'EOF'
import json, sys
src, lib, out = sys.argv[1:]
d = json.load(open(src))
d["ICD"]["library_path"] = lib
with open(out, "w") as f:
    json.dump(d, f, indent=1)
    f.write("\n")
EOF
    mv "$LVP_JSON.tmp" "$LVP_JSON"
}

# Does SAPIEN find a Vulkan device with the system's ICDs (VK_ICD_FILENAMES unset)?
system_vulkan_ok() {
    (cd "$CACHE" && env -u VK_ICD_FILENAMES "$PY" -c 'import sapien; sapien.render.RenderSystem()') >/dev/null 2>&1
}

# "<mirror URI> <signed-by keyring or ->" of the system's main Debian suite, read from the apt sources.
debian_source() {
    local codename="$1" f out=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        out="$(awk -v suite="$codename" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""; key = "-";
                for (i = 1; i <= NF; i++) {
                    line = $i; sub(/^[ \t]+/, "", line);
                    if (line ~ /^#/) continue;
                    low = tolower(line); val = line; sub(/^[^:]*:[ \t]*/, "", val);
                    if (low ~ /^types:/) types = val;
                    else if (low ~ /^uris:/) uris = val;
                    else if (low ~ /^suites:/) suites = val;
                    else if (low ~ /^signed-by:/ && val ~ /^\//) key = val;
                }
                if (types !~ /(^|[ \t])deb([ \t]|$)/) next;
                n = split(suites, s, /[ \t]+/);
                for (j = 1; j <= n; j++) if (s[j] == suite) { split(uris, u, /[ \t]+/); print u[1], key; exit }
            }' "$f")"
        [ -n "$out" ] && { echo "$out"; return 0; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        out="$(awk -v suite="$codename" '
            $1 == "deb" {
                key = "-"; i = 2;
                if ($2 ~ /^\[/) {
                    for (; i <= NF; i++) {
                        if ($i ~ /signed-by=/) { key = $i; sub(/.*signed-by=/, "", key); sub(/\]$/, "", key) }
                        if ($i ~ /\]$/) { i++; break }
                    }
                }
                if ($(i + 1) == suite) { print $i, key; exit }
            }' "$f")"
        [ -n "$out" ] && { echo "$out"; return 0; }
    done
    return 1
}

install_lavapipe() {
    local codename mirror keyring tmp ver deb
    # shellcheck disable=SC1091
    codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
    if [ "$codename" != "bookworm" ]; then
        die "no Vulkan device usable by SAPIEN, and the automatic Mesa 25 lavapipe download only exists for Debian 12 (this is '${codename:-unknown}')" \
            "install Mesa >= 23 Vulkan drivers (mesa-vulkan-drivers) or your GPU's Vulkan driver, or point VK_ICD_FILENAMES at its ICD json; RELAM_SKIP_VULKAN=1 skips this (no ManiSkill)"
    fi
    if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
        die "apt-get/dpkg not found" "install apt and dpkg, or set VK_ICD_FILENAMES to a Mesa >= 23 lavapipe / GPU ICD json"
    fi
    read -r mirror keyring < <(debian_source bookworm || true) || true
    if [ -z "${mirror:-}" ]; then
        mirror="http://deb.debian.org/debian"
        warn "no 'bookworm' suite found in the apt sources; using $mirror"
    fi
    if [ "${keyring:--}" = "-" ] || [ ! -f "$keyring" ]; then
        keyring=""   # apt falls back to /etc/apt/trusted.gpg.d
        [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] && keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    fi
    tmp="$(mktemp -d "$CACHE/mesa-apt.XXXXXX")"
    CLEANUP+=("$tmp")
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/dl"
    echo "deb ${keyring:+[signed-by=$keyring] }$mirror bookworm-backports main" > "$tmp/sources.list"
    local apt_opts=(
        -o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
        -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache" -o Debug::NoLocking=1
        -o Acquire::Languages=none
    )
    is_root && apt_opts+=(-o APT::Sandbox::User=root)   # our temp dir is not readable by _apt
    log "step $STEP: fetching bookworm-backports index from $mirror (private apt state, system untouched)"
    apt-get "${apt_opts[@]}" -q update >"$tmp/update.log" 2>&1 || {
        cat "$tmp/update.log" >&2
        die "apt-get update of bookworm-backports from $mirror failed" "check network access to the Debian mirror (see apt's output above)"
    }
    ver="$MESA_VERSION"
    if ! (cd "$tmp/dl" && apt-get "${apt_opts[@]}" -q download "mesa-vulkan-drivers=$ver" >"$tmp/dl.log" 2>&1); then
        ver="$(apt-cache "${apt_opts[@]}" madison mesa-vulkan-drivers 2>/dev/null \
               | awk -F'|' '$3 ~ /backports/ { gsub(/[ \t]/, "", $2); print $2; exit }')"
        [ -n "$ver" ] || die "mesa-vulkan-drivers is not in bookworm-backports at $mirror" \
            "install a Mesa >= 23 Vulkan driver yourself and set VK_ICD_FILENAMES to its lvp_icd json"
        dpkg --compare-versions "$ver" ge 23 || die "bookworm-backports offers mesa-vulkan-drivers $ver (< 23, rejected by SAPIEN)" \
            "set VK_ICD_FILENAMES to a Mesa >= 23 lavapipe or GPU ICD json"
        warn "mesa-vulkan-drivers=$MESA_VERSION is gone from the mirror; using the candidate $ver"
        (cd "$tmp/dl" && apt-get "${apt_opts[@]}" -q download "mesa-vulkan-drivers=$ver") \
            || die "apt-get download mesa-vulkan-drivers=$ver failed" "check network access to $mirror"
    fi
    deb="$(find "$tmp/dl" -name '*.deb' | head -n1)"
    log "step $STEP: unpacking $(basename "$deb") into ${MESA_DIR#"$REPO"/}"
    dpkg -x "$deb" "$tmp/pkg"
    mkdir -p "$MESA_DIR"
    rm -rf "$MESA_DIR/pkg"
    mv "$tmp/pkg" "$MESA_DIR/pkg"
    echo "$ver" > "$MESA_DIR/VERSION"
    write_lvp_json "$MESA_DIR/pkg" || die "the package has no lvp_icd json / libvulkan_lvp.so" "report this; set RELAM_MESA_VERSION to another version"
}

USE_LVP=0
user_icd=""
[ -n "${VK_ICD_FILENAMES:-}" ] && user_icd="; your VK_ICD_FILENAMES=$VK_ICD_FILENAMES takes precedence"
if [ "${RELAM_SKIP_VULKAN:-0}" = 1 ]; then
    log "step $STEP: skipped (RELAM_SKIP_VULKAN=1; ManiSkill will not work)"
elif lvp_json_ok; then
    USE_LVP=1
    log "step $STEP: ok (Mesa lavapipe $(cat "$MESA_DIR/VERSION" 2>/dev/null || echo '?') in ${MESA_DIR#"$REPO"/}$user_icd)"
elif [ -d "$MESA_DIR/pkg" ] && write_lvp_json "$MESA_DIR/pkg" && lvp_json_ok; then
    USE_LVP=1   # the checkout moved: library_path rewritten
    log "step $STEP: ok (rewrote ${LVP_JSON#"$REPO"/} for this checkout's path$user_icd)"
elif [ -n "${VK_ICD_FILENAMES:-}" ]; then
    log "step $STEP: ok (using your VK_ICD_FILENAMES=$VK_ICD_FILENAMES)"
elif system_vulkan_ok; then
    log "step $STEP: ok (the system's Vulkan driver works with SAPIEN; no lavapipe needed)"
else
    log "step $STEP: the system's Vulkan driver is not usable by SAPIEN; installing Mesa lavapipe $MESA_VERSION"
    install_lavapipe
    USE_LVP=1
fi
if [ "$USE_LVP" = 1 ]; then
    lvp_lib="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["ICD"]["library_path"])' "$LVP_JSON")"
    if unresolved="$(ldd "$lvp_lib" 2>/dev/null | grep 'not found')"; then
        die "lavapipe's libraries are missing: $(echo "$unresolved" | awk '{print $1}' | tr '\n' ' ')" \
            "as root: apt-get install -y --no-install-recommends libvulkan1 mesa-vulkan-drivers (brings libLLVM-15 and the xcb libs)"
    fi
fi

# ---------------------------------------------------------------------------------------------------------
STEP="5/5 env file + render check"
{
    echo "# Generated by scripts/bootstrap.sh; source it before running project code:  . .venv/relam-env.sh"
    echo "export VIRTUAL_ENV='$VENV'"
    echo "case \":\$PATH:\" in *':$VENV/bin:'*) ;; *) export PATH='$VENV/bin':\"\$PATH\" ;; esac"
    echo "export MUJOCO_GL=\"\${MUJOCO_GL:-egl}\""
    echo "if [ \"\$MUJOCO_GL\" = egl ]; then export PYOPENGL_PLATFORM=\"\${PYOPENGL_PLATFORM:-egl}\"; fi"
    if [ "$USE_LVP" = 1 ]; then
        echo "# ManiSkill/SAPIEN: Mesa lavapipe unpacked by bootstrap (a VK_ICD_FILENAMES you set wins)"
        echo "if [ -z \"\${VK_ICD_FILENAMES:-}\" ]; then export VK_ICD_FILENAMES='$LVP_JSON'; fi"
    fi
    echo "export PYTHONUNBUFFERED=1"
} > "$ENV_FILE.tmp"
if cmp -s "$ENV_FILE.tmp" "$ENV_FILE"; then rm -f "$ENV_FILE.tmp"; else mv "$ENV_FILE.tmp" "$ENV_FILE"; fi

if [ "$SKIP_CHECKS" = 1 ]; then
    log "step $STEP: wrote .venv/relam-env.sh; render check skipped"
else
    check_log="$CACHE/bootstrap-check.log"
    check_vulkan=1
    [ "${RELAM_SKIP_VULKAN:-0}" = 1 ] && check_vulkan=0
    # shellcheck disable=SC1090
    if ! ( . "$ENV_FILE" && cd "$CACHE" && "$PY" - "$REPO" "$check_vulkan" "$LVP_JSON" >"$check_log" 2>&1 <<'EOF'
import importlib.util, os, sys
repo, check_vulkan, lvp_json = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
failed = []
spec = importlib.util.find_spec("relam")
if spec is None or not os.path.realpath(spec.origin).startswith(os.path.realpath(repo) + os.sep):
    failed.append("relam: not importable from this checkout (editable install missing) -> rm .venv/.relam-stamp; re-run")
try:
    import cv2  # noqa: F401
except Exception as e:
    failed.append(f"opencv: import cv2 failed ({e}) -> apt-get install libgl1 libglib2.0-0")
try:
    import mujoco
    m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=".1"/></worldbody></mujoco>')
    d = mujoco.MjData(m)
    mujoco.mj_forward(m, d)
    r = mujoco.Renderer(m, 16, 16)
    r.update_scene(d)
    r.render()
    print("mujoco egl: ok")
except Exception as e:
    failed.append(f"mujoco (MUJOCO_GL={os.environ.get('MUJOCO_GL')}): offscreen render failed ({e!r}) "
                  "-> apt-get install libegl1 libegl-mesa0 libopengl0 libgl1-mesa-dri")
if check_vulkan:
    try:
        import sapien
        sapien.render.RenderSystem()
        print("sapien vulkan: ok")
    except Exception as e:
        icd = os.environ.get("VK_ICD_FILENAMES", "")
        fix = ("rm -rf .cache/mesa and re-run scripts/bootstrap.sh" if icd == lvp_json else
               "unset VK_ICD_FILENAMES or point it at a working Vulkan ICD json" if icd else
               "rm -rf .cache/mesa and re-run, or set VK_ICD_FILENAMES to a working Vulkan ICD json")
        failed.append(f"sapien: no usable Vulkan device ({e}; VK_ICD_FILENAMES={icd or '<unset>'}) -> {fix}")
for f in failed:
    print("FAILED:", f)
sys.stdout.flush()
os._exit(1 if failed else 0)  # skip interpreter teardown (noisy EGL destructor errors)
EOF
    ); then
        grep '^FAILED:' "$check_log" | sed 's/^FAILED: /[bootstrap]   /' >&2 || true
        die "render check failed (details above; full log: ${check_log#"$REPO"/})" "apply the fix named on each line, or re-run with --skip-checks to bypass"
    fi
    log "step $STEP: ok (.venv/relam-env.sh written; relam importable, MuJoCo EGL$([ "$check_vulkan" = 1 ] && echo ', SAPIEN Vulkan') and OpenCV work)"
fi

log "ready in $((SECONDS - START_TS))s. Use:  . .venv/relam-env.sh  (or ./run_all.sh / ./run_tests.sh)"
