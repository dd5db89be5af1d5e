#!/usr/bin/env bash
# Builds berth, starts `berth up` with its embedded defaults in the
# background, imports a busybox image and runs a web server container that
# answers on http://localhost:8000, runs a batch job on the embedded cluster
# and a message through the embedded AMQP broker.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release --quiet
BERTH=target/release/berth
install -m 0755 "$BERTH" /usr/local/bin/berth
if ! berth info >/dev/null 2>&1; then
  mkdir -p /var/log
  nohup berth up >/var/log/berth.log 2>&1 &
  for _ in $(seq 100); do berth info >/dev/null 2>&1 && break; sleep 0.1; done
fi
berth info
if ! berth image inspect busybox >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  cargo run --release --quiet -p berth-testkit --example busybox-tarball -- "$tmp/busybox.tar"
  berth image import "$tmp/busybox.tar" --tag busybox
  rm -rf "$tmp"
fi
berth rm -f web >/dev/null 2>&1 || true
berth run -d -p 8000:8000 --name web busybox httpd -f -p 8000 -h /www
for _ in $(seq 50); do curl -fsS http://localhost:8000/ && break; sleep 0.1; done
berth ps
# The embedded one-server cluster and local agent: a small batch job.
for _ in $(seq 100); do berth node ls >/dev/null 2>&1 && break; sleep 0.1; done
job=$(mktemp --suffix=.toml)
printf 'name = "hello"\ninstances = 2\ncommand = "echo hello from the cluster"\ncpus = 0.1\nmem = 16\n' > "$job"
berth job stop hello >/dev/null 2>&1 || true
berth job run "$job"
rm -f "$job"
for _ in $(seq 100); do berth job status hello --json | grep -q '"status": "finished"' && break; sleep 0.1; done
berth task ls --job hello
berth node ls
# The embedded AMQP broker: pika (an unchanged RabbitMQ client) publishes a
# persistent message with a confirm and reads it back.
for _ in $(seq 100); do berth broker queues >/dev/null 2>&1 && break; sleep 0.1; done
python3 examples/amqp_hello.py
berth broker queues
echo "berth is up: try 'berth ps', 'berth logs web', 'berth exec web ls /www', 'berth job status hello', 'berth broker queues'; the daemon logs to /var/log/berth.log"
