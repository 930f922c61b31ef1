#!/usr/bin/env bash
# `make demo`: what segstream does today, end to end against the local broker.
#
#  1. checks the example configuration;
#  2. produces the reference corpus: every event kind in every accepted wire
#     format (protobuf, JSON, Confluent-framed) plus every bad-record case;
#  3. runs the pipeline for DEMO_SECONDS, which decodes, validates and routes
#     refused records to the dead-letter topic;
#  4. shows the dead-letter topic: reason, source coordinates and message.
#
# The broker is started (and stopped afterwards) by deploy/local/with-kafka.sh.
# Scoring, segments and hot swap arrive with their issues; this script grows
# with them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
KAFKA_SH=deploy/local/kafka.sh
BIN=target/release/segstream
DEMO_SECONDS="${DEMO_SECONDS:-8}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Building segstream (release)"
cargo build --locked --release --bin segstream

step "Checking the example configuration"
"$BIN" config check deploy/segstream.example.toml

# Topics and a consumer group of this run only (overriding the example file
# through the environment), so the output shows this run and nothing older.
run_id="demo-$(date +%s)"
export SEGSTREAM__KAFKA__BOOTSTRAP_SERVERS="${SEGSTREAM_TEST_BOOTSTRAP:-127.0.0.1:19092}"
export SEGSTREAM__KAFKA__GROUP_ID="segstream-$run_id"
export SEGSTREAM__INPUT__TOPICS="$run_id.events.browse,$run_id.events.purchase,$run_id.events.review"
export SEGSTREAM__DEAD_LETTER__TOPIC="$run_id.segstream-dlq"

step "Creating topics ($run_id.*)"
for t in ${SEGSTREAM__INPUT__TOPICS//,/ }; do
  "$KAFKA_SH" topic "$t" "${PARTITIONS:-3}"
done
"$KAFKA_SH" topic "$SEGSTREAM__DEAD_LETTER__TOPIC" 1

step "Producing the reference corpus"
"$BIN" -c deploy/segstream.example.toml samples --customers 3

step "Running the pipeline for ${DEMO_SECONDS}s"
"$BIN" -c deploy/segstream.example.toml run &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' EXIT
sleep "$DEMO_SECONDS"
kill -TERM "$pid"
wait "$pid"
trap - EXIT

step "Dead-letter topic $SEGSTREAM__DEAD_LETTER__TOPIC"
"$BIN" -c deploy/segstream.example.toml dlq show --idle 3s
