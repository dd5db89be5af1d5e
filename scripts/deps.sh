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
# pika for the broker tests (crates/berth/tests/broker), into whichever python3 is on PATH.
if ! python3 -c 'import pika, sys; sys.exit(pika.__version__ != "1.3.2")' 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --break-system-packages pika==1.3.2 >/dev/null
fi
