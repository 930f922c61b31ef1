#!/usr/bin/env bash
# `make demo`: segstream end to end against the local broker.
#
#  1. builds segstream and checks the example configuration;
#  2. creates this run's topics and a model registry holding the built-in
#     recency/frequency/monetary rule model;
#  3. produces the reference corpus: every event kind in every accepted wire
#     format (protobuf, JSON, Confluent-framed) plus every bad-record case;
#  4. runs the pipeline (exactly-once transactions, state, scoring, decisions)
#     for DEMO_SECONDS and samples its /metrics;
#  5. shows the segment changes it published and the dead-letter topic.
#
# The broker is started (and stopped afterwards) by deploy/local/with-kafka.sh.
# The realistic generator and the trainer arrive with their issues; this
# script grows with them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
KAFKA_SH=deploy/local/kafka.sh
BIN=target/release/segstream
DEMO_SECONDS="${DEMO_SECONDS:-10}"
METRICS_ADDR="${METRICS_ADDR:-127.0.0.1:9464}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Building segstream (release)"
cargo build --locked --release --bin segstream

step "Checking the example configuration"
"$BIN" config check deploy/segstream.example.toml

# Topics, group and registry of this run only (overriding the example file
# through the environment), so the output shows this run and nothing older.
run_id="demo-$(date +%s)"
export SEGSTREAM__KAFKA__BOOTSTRAP_SERVERS="${SEGSTREAM_TEST_BOOTSTRAP:-127.0.0.1:19092}"
export SEGSTREAM__KAFKA__GROUP_ID="segstream-$run_id"
export SEGSTREAM__INPUT__TOPICS="$run_id.events.browse,$run_id.events.purchase,$run_id.events.review"
export SEGSTREAM__DEAD_LETTER__TOPIC="$run_id.segstream-dlq"
export SEGSTREAM__STATE__CHANGELOG_TOPIC="$run_id.segstream-state-changelog"
export SEGSTREAM__OUTPUT__TOPIC="$run_id.customer-segments"
export SEGSTREAM__SCORE__REGISTRY="target/demo/$run_id/models"
export SEGSTREAM__PIPELINE__TRANSACTIONAL_ID="segstream-$run_id"
export SEGSTREAM__PIPELINE__HTTP_LISTEN="$METRICS_ADDR"
CONFIG=deploy/segstream.example.toml

step "Creating topics ($run_id.*)"
for t in ${SEGSTREAM__INPUT__TOPICS//,/ }; do
  "$KAFKA_SH" topic "$t" "${PARTITIONS:-3}"
done
"$KAFKA_SH" topic "$SEGSTREAM__STATE__CHANGELOG_TOPIC" "${PARTITIONS:-3}" cleanup.policy=compact
"$KAFKA_SH" topic "$SEGSTREAM__DEAD_LETTER__TOPIC" 1
"$KAFKA_SH" topic "$SEGSTREAM__OUTPUT__TOPIC" 1

step "Publishing the built-in rule model to $SEGSTREAM__SCORE__REGISTRY"
"$BIN" -c "$CONFIG" model builtin --kind rules --promote
"$BIN" -c "$CONFIG" model validate "$SEGSTREAM__SCORE__REGISTRY/rules-1"

step "Producing the reference corpus"
"$BIN" -c "$CONFIG" samples --customers 5

step "Running the pipeline for ${DEMO_SECONDS}s (metrics on http://$METRICS_ADDR/metrics)"
"$BIN" -c "$CONFIG" run &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' EXIT
sleep "$DEMO_SECONDS"
if command -v curl >/dev/null; then
  echo "-- readiness: $(curl -s "http://$METRICS_ADDR/readyz" || true)"
  curl -s "http://$METRICS_ADDR/metrics" \
    | grep -E '^segstream_(events_accepted_total|dead_letters_total\{.*\} [1-9]|segment_changes_total|transactions_total|model_info)' \
    || true
fi
kill -TERM "$pid"
wait "$pid"
trap - EXIT

step "Segment changes published to $SEGSTREAM__OUTPUT__TOPIC"
"$BIN" -c "$CONFIG" segments show --idle 3s

step "Dead-letter topic $SEGSTREAM__DEAD_LETTER__TOPIC"
"$BIN" -c "$CONFIG" dlq show --idle 3s
