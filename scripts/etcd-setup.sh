#!/usr/bin/env bash
# Installs etcd (Debian etcd-server + etcd-client) for bffgate fleet mode.
# Idempotent: does nothing but print versions when etcd and etcdctl are present.
# Needs root (or sudo) and the Debian package mirror; nothing is started here
# (scripts/etcd.mjs starts a loopback-only cluster per run).
set -euo pipefail

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)

if ((${#need[@]})); then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "etcd-setup: need root or sudo to install ${need[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  echo "etcd-setup: installing ${need[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  # Debian's postinst may start a system-wide etcd (systemd hosts). bffgate never
  # uses it; stop it so it does not hold 127.0.0.1:2379/2380 by surprise.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    $SUDO systemctl stop etcd || true
    $SUDO systemctl disable etcd >/dev/null 2>&1 || true
  fi
fi

echo "etcd-setup: $(etcd --version 2>/dev/null | head -1)"
echo "etcd-setup: $(ETCDCTL_API=3 etcdctl version 2>/dev/null | head -1)"
