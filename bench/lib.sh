# Shared helpers for ebb's benchmarks (sourced, not run). Each benchmark builds ebb in
# release mode, starts the local Kafka, prints a table and ends with one RESULT line.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bootstrap="127.0.0.1:${EBB_KAFKA_PORT:-9092}"
ebb="$root/target/release/ebb"
export KAFKA_BOOTSTRAP_SERVERS="$bootstrap"

say() { echo "[$(date +%H:%M:%S)] $*" >&2; }

prepare() {
  say "building ebb (release)"
  cargo build --release --quiet -p ebb
  "$root/scripts/kafka-local" start >&2
}

kafka_tool() { "$root/scripts/kafka-local" tool "$@"; }

# new_topic PREFIX PARTITIONS [--config k=v ...] -> prints the name
new_topic() {
  local name="bench-$1-$(date +%s)-$$"
  shift
  local partitions="$1"
  shift
  "$ebb" topic create "$name" --partitions "$partitions" "$@" >&2
  echo "$name"
}

# Sum of the end offsets of a topic (records in it), from the broker.
topic_records() {
  kafka_tool org.apache.kafka.tools.GetOffsetShell --bootstrap-server "$bootstrap" \
    --topic "$1" --time -1 2>/dev/null | awk -F: '{s += $3} END {print s + 0}'
}

# ratio A B -> A/B with 2 decimals
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}' if b else 'inf')" "$1" "$2"; }

machine() { echo "$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"; }

# A TCP port on 127.0.0.1 that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The value of one sample from a Prometheus endpoint (0 when absent).
scrape() {
  curl -s "http://$1/metrics" | awk -v name="$2" '$1 == name {print $2; found=1} END {if (!found) print 0}'
}

# processed_rate ADDR FROM TO: records/s processed between FROM and TO seconds from now,
# read from kafka_messages_processed_total.
processed_rate() {
  local addr="$1" from="$2" to="$3" a b
  sleep "$from"
  a=$(scrape "$addr" 'kafka_messages_processed_total{status="success"}')
  sleep "$((to - from))"
  b=$(scrape "$addr" 'kafka_messages_processed_total{status="success"}')
  python3 -c "print(round(($b - $a) / ($to - $from), 1))"
}
