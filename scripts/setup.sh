#!/usr/bin/env bash
# Install everything pyflannel, its demo and its tests need on a Debian machine (run as root):
# Debian packages, then a virtualenv in .venv with pyflannel installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  etcd-server etcd-client          # the registry (serves the v2 and v3 APIs)
  iproute2 iputils-ping curl procps  # namespaces, links, ping, curl, sysctl
  iptables                         # masquerade and forward rules (nft and legacy); the CNI bridge
  containernetworking-plugins      # the CNI bridge/host-local plugins pyflannel-cni delegates to
  libpcap0.8 openssl systemd       # packet capture, test certificates, systemd-analyze
  python3-venv python3-pip
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
echo "setup done: $(.venv/bin/pyflannel --version 2>&1) in $(pwd)/.venv"
