#!/bin/bash
# Set up everything ingero needs on a Debian 12 machine, as root. Idempotent: every step runs every
# time, so a fresh machine takes the same path as a ready one (a ready machine takes seconds).
#
#   scripts/setup.sh            system + python
#   scripts/setup.sh system     Debian packages, kernel header link, tracefs
#   scripts/setup.sh python     the venv (VENV, default .venv) with Debian's bcc linked in + ingero[test]
#   scripts/setup.sh torch      the PyTorch test fixture: a venv outside the checkout (TORCH_FIXTURE) with
#                               torch==TORCH_VERSION, built once per machine and reused by every clone
#   scripts/setup.sh test|bench everything, the fixtures included (make test, make bench)
#   scripts/setup.sh pythons    checks the CPython builds the Python-frame tests trace (3.10 to 3.13, pyenv,
#                               shared libpython, with headers) and says how to get a missing one
set -euo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:-all}
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.14.1}
TORCH_FIXTURE=${TORCH_FIXTURE:-/var/cache/ingero-fixtures/torch-$TORCH_VERSION-py3.11}
export DEBIAN_FRONTEND=noninteractive

say() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  say "must run as root (apt, /lib/modules, tracefs, BPF); try: sudo make ${MAKECMDGOALS:-test}"
  exit 1
fi

PKGS="python3-bpfcc linux-headers-amd64 bpftrace bpftool gcc g++ make libc6-dev binutils util-linux
      python3-venv python3.11 ca-certificates openssl prometheus"

system_setup() {
  local t0=$SECONDS missing p
  # Debian packages: install every time (a no-op when present); refresh the lists only if that fails.
  missing=""
  # shellcheck disable=SC2086
  for p in $PKGS; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=" $p"; done
  [ -z "$missing" ] || say "installing Debian packages:$missing"
  # shellcheck disable=SC2086
  if ! apt-get install -y -qq --no-install-recommends $PKGS >/dev/null 2>&1; then
    say "apt-get install failed; refreshing package lists and retrying"
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
  fi
  # Debian's prometheus is the server the fleet tests start themselves (a temporary one on a loopback port);
  # installing it starts a system service on :9090 under systemd: stop and disable that one if we installed it
  if [[ " $missing " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  # BCC compiles against a kernel header tree. Custom kernels (like this VM's) have no
  # linux-headers-$(uname -r): point /lib/modules/$(uname -r)/{build,source} at Debian's newest tree,
  # which is enough for uprobes (only struct pt_regs and the BPF uapi are used).
  local kv h c
  kv=$(uname -r)
  if [ -e "/usr/src/linux-headers-$kv/include/generated/autoconf.h" ]; then
    h=/usr/src/linux-headers-$kv; c=${h%-amd64}-common; [ -d "$c" ] || c=$h
  else
    h=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -1); c=${h%-amd64}-common
  fi
  mkdir -p "/lib/modules/$kv"
  ln -sfn "$h" "/lib/modules/$kv/build"
  ln -sfn "$c" "/lib/modules/$kv/source"
  # tracefs: BCC's detach path and the uprobe checks use it.
  mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
  # Node.js runs the MCP Inspector CLI, the independent MCP client of the tests (npx fetches it).
  # Machines of this kind bring Node 20; elsewhere take Debian's.
  if ! command -v npx >/dev/null; then
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  say "system ready in $((SECONDS - t0)) s (kernel $kv, headers $(basename "$h"), tracefs mounted)"
}

python_setup() {
  local t0=$SECONDS
  [ -x "$VENV/bin/python" ] || { say "creating the venv $VENV"; "$PY" -m venv "$VENV"; }
  local sp
  sp=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # Debian's bcc is pure Python over libbcc.so.0: link only that package into the venv.
  ln -sfn /usr/lib/python3/dist-packages/bcc "$sp/bcc"
  "$VENV/bin/python" -m pip install -qq --disable-pip-version-check -e '.[test]'
  # ingero's bytecode, as a wheel install has it (pip compiles at install; an editable install does not,
  # and under PYTHONDONTWRITEBYTECODE=1 every start would compile each module it imports again)
  "$VENV/bin/python" -m compileall -q ingero >/dev/null
  "$VENV/bin/python" -c 'import bcc, ingero' 
  say "venv ready in $((SECONDS - t0)) s ($VENV, $("$VENV/bin/python" -V), bcc linked, ingero[test] installed)"
}

torch_setup() {
  # A venv outside the checkout, marked ready only once torch imports, so a half-built fixture (an
  # interrupted setup) is rebuilt rather than used. pip on Python 3.11 takes the CUDA build from this
  # machine kind's disk; elsewhere from the package index (several GB).
  if [ -f "$TORCH_FIXTURE/.ready" ]; then
    say "torch fixture ready ($TORCH_FIXTURE)"
    return
  fi
  local t0=$SECONDS
  say "building the PyTorch test fixture (torch==$TORCH_VERSION, once per machine) in $TORCH_FIXTURE"
  rm -rf "$TORCH_FIXTURE"
  mkdir -p "$(dirname "$TORCH_FIXTURE")"
  python3.11 -m venv "$TORCH_FIXTURE"
  "$TORCH_FIXTURE/bin/python" -m pip install -qq --disable-pip-version-check "torch==$TORCH_VERSION" numpy
  "$TORCH_FIXTURE/bin/python" -c 'import torch'
  touch "$TORCH_FIXTURE/.ready"
  say "torch fixture built in $((SECONDS - t0)) s"
}

pythons_setup() {
  # tests/e2e/test_pyframes.py traces every CPython 3.10+ here; these four must exist (under CI=true the
  # tests fail without them). pyenv builds them with a shared libpython; Debian's python3.11 (static) is
  # traced too when present.
  local root=${PYENV_ROOT:-$HOME/.pyenv} v exe missing=""
  for v in 3.10 3.11 3.12 3.13; do
    exe=$(ls -d "$root"/versions/"$v".*/bin/python"$v" 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$exe" ] && "$exe" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
      say "CPython $v: $exe"
    else
      missing="$missing $v"
    fi
  done
  if [ -n "$missing" ]; then
    say "CPython${missing} missing: the Python-frame tests need them; get them with pyenv:"
    say "  PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install <3.X.Y>   (for each of${missing})"
  fi
}

case "$PHASE" in
  system) system_setup ;;
  python) python_setup ;;
  torch) torch_setup ;;
  pythons) pythons_setup ;;
  all) system_setup; python_setup ;;
  test|bench) system_setup; python_setup; torch_setup; pythons_setup ;;
  *) say "unknown phase $PHASE (system|python|torch|pythons|all|test|bench)"; exit 2 ;;
esac
