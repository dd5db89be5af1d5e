#!/usr/bin/env bash
# Installs what berth and its tests need from Debian (idempotent).
set -euo pipefail
pkgs=(busybox-static iptables iproute2 curl runc util-linux iputils-ping procps ca-certificates skopeo python3)
need=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing from Debian: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
