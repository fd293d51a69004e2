#!/usr/bin/env bash
# Install pyflannel on a cell from this checkout: stock Debian 12 or later, as root.
#
#   bash scripts/install.sh              install, or upgrade in place
#   bash scripts/install.sh --root DIR   the same under DIR instead of / (DESTDIR=DIR too): for
#                                        a test or an image; the virtualenv's paths name DIR
#
# What it does, and why:
#   * a virtualenv in /opt/pyflannel with pyflannel installed into it: Debian's pip refuses to
#     install into the system Python (externally-managed-environment), and the daemon's
#     dependencies stay apart from Debian's packages.  python3-venv is installed if missing.
#   * /usr/local/bin/pyflannel and /usr/local/bin/pyflannel-cni: links into the virtualenv;
#     the unit's ExecStart= names /usr/local/bin/pyflannel.  (pyflannel-cni is also linked
#     into /opt/cni/bin when that directory exists, where container runtimes look.)
#   * /etc/systemd/system/pyflannel.service, and /etc/pyflannel/pyflannel.env (mode 0600: it
#     may hold an etcd password) unless one is there already: yours is kept.
#   * the unit is enabled when systemd runs (with --root: in DIR, by systemctl --root), not
#     started: set FLANNELD_ETCD_ENDPOINTS etc. in the environment file first.
#
# pip's own variables apply, e.g. PIP_NO_INDEX=1 PIP_FIND_LINKS=/srv/wheels to install offline.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
root=${DESTDIR:-}
while (($#)); do
  case $1 in
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$root" ]; then
  mkdir -p "$root"
  root=$(cd "$root" && pwd)
  [ "$root" = / ] && root=
elif [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run it as root (or with --root DIR)" >&2
  exit 1
fi
venv=$root/opt/pyflannel
bindir=$root/usr/local/bin
unit=$root/etc/systemd/system/pyflannel.service
envfile=$root/etc/pyflannel/pyflannel.env
python=${PYTHON:-python3}

usable() { "$python" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
if ! usable && [ -z "$root" ] && command -v apt-get >/dev/null; then
  echo "installing python3-venv (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
fi
if ! usable; then
  echo "install.sh: needs $python >= 3.11 with the venv module (Debian: apt-get install python3-venv)" >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "creating the virtualenv $venv"
  "$python" -m venv "$venv"
fi
# pip builds in the source tree it is given: build from a copy, the checkout stays as it is.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -C "$src" --exclude=./.venv --exclude=./.git --exclude=./build --exclude='*.egg-info' \
  --exclude=__pycache__ -cf - . | tar -C "$work" -xf -
echo "installing pyflannel from $src into $venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$work"

mkdir -p "$bindir"
for cmd in pyflannel pyflannel-cni; do
  ln -sfn "$venv/bin/$cmd" "$bindir/$cmd"
  echo "linked $bindir/$cmd -> $venv/bin/$cmd"
done
if [ -d "$root/opt/cni/bin" ]; then
  ln -sfn "$venv/bin/pyflannel-cni" "$root/opt/cni/bin/pyflannel-cni"
  echo "linked $root/opt/cni/bin/pyflannel-cni -> $venv/bin/pyflannel-cni"
fi

install -D -m 0644 "$src/systemd/pyflannel.service" "$unit"
echo "installed $unit"
if [ -e "$envfile" ]; then
  echo "kept $envfile (already there; compare with $src/systemd/pyflannel.env)"
else
  install -d -m 0755 "$(dirname "$envfile")"
  install -m 0600 "$src/systemd/pyflannel.env" "$envfile"
  echo "installed $envfile (mode 0600): set FLANNELD_ETCD_ENDPOINTS and friends there"
fi

if [ -n "$root" ]; then
  if command -v systemctl >/dev/null; then
    systemctl --root="$root" --quiet enable pyflannel.service
    echo "enabled pyflannel.service in $root"
  else
    echo "systemctl not found: pyflannel.service is installed in $root but not enabled"
  fi
elif [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl --quiet enable pyflannel.service
  echo "enabled pyflannel.service; after editing $envfile: systemctl start pyflannel"
else
  echo "systemd is not running here (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown)):" \
    "pyflannel.service is installed but not enabled; on a systemd host:" \
    "systemctl daemon-reload && systemctl enable --now pyflannel"
fi
if [ -z "$root" ] && ! PATH=$PATH:/usr/sbin:/sbin command -v iptables >/dev/null; then
  echo "note: iptables is not installed; the forward rules (on by default) and --ip-masq need it:" \
    "apt-get install iptables"
fi
echo "done: $("$bindir/pyflannel" --version 2>&1) at $bindir/pyflannel"
