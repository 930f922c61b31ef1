#!/usr/bin/env bash
# `make demo`: segstream end to end against the local broker, in about five
# minutes on a laptop-class machine.
#
#  1. builds segstream and checks the example configuration;
#  2. creates this run's topics;
#  3. generates DEMO_DAYS days of realistic history for DEMO_CUSTOMERS
#     customers into the input topic (seeded: the same world every time);
#  4. trains the first model from that topic: replay through the serving
#     state and feature code, point-in-time examples, a Transformer, the
#     baselines, ONNX export with a parity check, promotion;
#  5. starts the pipeline, which replays the history into its state and
#     classifies every customer, then streams the world live for
#     DEMO_SECONDS (the world moves at DEMO_RATE events/s, each customer at
#     the pace of a person: see `generate --pace people`) with DEMO_BOTS
#     generated bots merged in, printing reclassifications as they happen
#     and a summary every DEMO_SUMMARY_EVERY seconds;
#  6. midway, trains a second model on everything so far; the running
#     pipeline validates and hot-swaps it and rescores its customers
#     (trigger MODEL_UPDATE);
#  7. stops everything, prints the live quality table (every prediction
#     checked against what the customer then did: `segstream report`) and
#     writes the report page. Ctrl-C stops early, cleanly.
#
# The broker is started and always stopped by deploy/local/with-kafka.sh.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
KAFKA_SH=deploy/local/kafka.sh
BIN=target/release/segstream
DEMO_SECONDS="${DEMO_SECONDS:-120}"
DEMO_CUSTOMERS="${DEMO_CUSTOMERS:-600}"
DEMO_DAYS="${DEMO_DAYS:-150}"
DEMO_RATE="${DEMO_RATE:-150}"
DEMO_SUMMARY_EVERY="${DEMO_SUMMARY_EVERY:-20}"
DEMO_SEED="${DEMO_SEED:-7}"
DEMO_BOTS="${DEMO_BOTS:-2}"
METRICS_ADDR="${METRICS_ADDR:-127.0.0.1:9464}"

bold() { printf '\033[1m%s\033[0m\n' "$*"; }
step() { printf '\n'; bold "== $*"; }

step "Building segstream (release)"
cargo build --locked --release --bin segstream

step "Checking the example configuration"
"$BIN" config check deploy/segstream.example.toml

# Topics, group and registry of this run only (overriding the example file
# through the environment), so the output shows this run and nothing older.
# One input topic for all event kinds keeps the demo small (the pipeline also
# merges separate per-kind topics by event time: input.max_idle).
run_id="demo-$(date +%s)"
work="target/demo/$run_id"
mkdir -p "$work"
export SEGSTREAM__KAFKA__BOOTSTRAP_SERVERS="${SEGSTREAM_TEST_BOOTSTRAP:-127.0.0.1:19092}"
export SEGSTREAM__KAFKA__GROUP_ID="segstream-$run_id"
export SEGSTREAM__INPUT__TOPICS="$run_id.events"
export SEGSTREAM__DEAD_LETTER__TOPIC="$run_id.segstream-dlq"
export SEGSTREAM__STATE__CHANGELOG_TOPIC="$run_id.segstream-state-changelog"
export SEGSTREAM__OUTPUT__TOPIC="$run_id.customer-segments"
export SEGSTREAM__OUTPUT__CURRENT_TOPIC="$run_id.customer-segments.current"
export SEGSTREAM__OUTPUT__RISK_TOPIC="$run_id.customer-risk"
export SEGSTREAM__OUTPUT__OUTCOMES_TOPIC="$run_id.customer-outcomes"
export SEGSTREAM__SCORE__REGISTRY="$work/models"
export SEGSTREAM__SCORE__POLL_INTERVAL="1s"
export SEGSTREAM__PIPELINE__TRANSACTIONAL_ID="segstream-$run_id"
export SEGSTREAM__PIPELINE__HTTP_LISTEN="$METRICS_ADDR"
# A demo-sized Transformer (the defaults, d=64, take longer on 2 cores).
export SEGSTREAM__TRAIN__D_MODEL="${DEMO_D_MODEL:-32}"
export SEGSTREAM__TRAIN__FFN_DIM="${DEMO_FFN_DIM:-64}"
export SEGSTREAM__TRAIN__MAX_EPOCHS="${DEMO_EPOCHS:-4}"
export SEGSTREAM__TRAIN__THREADS=1
CONFIG=deploy/segstream.example.toml
GEN=(generate --customers "$DEMO_CUSTOMERS" --days "$DEMO_DAYS" --seed "$DEMO_SEED")

step "Creating topics ($run_id.*)"
# The history's records carry their event times as timestamps: without
# retention.ms=-1 the broker's time-based retention would delete most of it.
"$KAFKA_SH" topic "$SEGSTREAM__INPUT__TOPICS" "${PARTITIONS:-3}" retention.ms=-1
"$KAFKA_SH" topic "$SEGSTREAM__STATE__CHANGELOG_TOPIC" "${PARTITIONS:-3}" cleanup.policy=compact
"$KAFKA_SH" topic "$SEGSTREAM__DEAD_LETTER__TOPIC" 1
"$KAFKA_SH" topic "$SEGSTREAM__OUTPUT__TOPIC" 1
"$KAFKA_SH" topic "$SEGSTREAM__OUTPUT__CURRENT_TOPIC" "${PARTITIONS:-3}" cleanup.policy=compact
"$KAFKA_SH" topic "$SEGSTREAM__OUTPUT__RISK_TOPIC" 1
"$KAFKA_SH" topic "$SEGSTREAM__OUTPUT__OUTCOMES_TOPIC" 1

step "Generating $DEMO_DAYS days of history for $DEMO_CUSTOMERS customers into $SEGSTREAM__INPUT__TOPICS"
"$BIN" -c "$CONFIG" "${GEN[@]}" --to kafka

step "Training the first model from the input topic"
echo "(replay through the serving state and features; examples every 7 days with labels from the next 30;"
echo " the latest cut times validate; baselines on the same examples; ONNX export checked with ONNX Runtime)"
"$BIN" -c "$CONFIG" train --from topics --version model-1

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'echo; bold "Interrupted: stopping."; exit 130' INT TERM

step "Starting the pipeline (metrics: http://$METRICS_ADDR/metrics, readiness: /readyz)"
"$BIN" -c "$CONFIG" run >"$work/pipeline.log" 2>&1 &
pids+=($!)
pipeline=$!
for _ in $(seq 1 120); do
  if curl -fs "http://$METRICS_ADDR/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$pipeline" 2>/dev/null; then
    echo "the pipeline exited; its log:"; tail -20 "$work/pipeline.log"; exit 1
  fi
  sleep 0.5
done
echo "ready: $(curl -fs "http://$METRICS_ADDR/readyz" || echo no)"

# Reads the counters the summary needs from /metrics.
metric_sum() { # name [label filter regex]
  curl -fs "http://$METRICS_ADDR/metrics" 2>/dev/null \
    | awk -v name="$1" -v filter="${2:-}" '
        $1 ~ "^"name"({|$)" && (filter == "" || $1 ~ filter) { s += $2 }
        END { printf "%d", s }'
}
summary() {
  local events changes model dist
  events=$(metric_sum segstream_events_accepted_total)
  changes=$(( $(metric_sum segstream_segment_changes_total) - $(metric_sum segstream_segment_changes_total 'from="none"') ))
  model=$(curl -fs "http://$METRICS_ADDR/metrics" 2>/dev/null \
    | awk '/^segstream_model_info\{/ && $2 == 1 { match($1, /version="[^"]*"/); print substr($1, RSTART + 9, RLENGTH - 10) }')
  # Current segment sizes: arrivals minus departures, from the change counters.
  dist=$(curl -fs "http://$METRICS_ADDR/metrics" 2>/dev/null | awk '
      /^segstream_segment_changes_total\{/ {
        match($1, /from="[^"]*"/); f = substr($1, RSTART + 6, RLENGTH - 7)
        match($1, /to="[^"]*"/); t = substr($1, RSTART + 4, RLENGTH - 5)
        n[t] += $2; if (f != "none") n[f] -= $2 }
      END { for (s in n) if (n[s] > 0) printf "%s %d  ", s, n[s] }')
  local now=$SECONDS
  local rate=$(( (events - ${last_events:-0}) / ( (now - ${last_t:-0}) > 0 ? (now - ${last_t:-0}) : 1 ) ))
  last_events=$events; last_t=$now
  printf '\033[1m-- %3ds: %d events (%d/s), %d reclassifications, model %s\n   segments: %s\033[0m\n' \
    "$SECONDS" "$events" "$rate" "$changes" "${model:-?}" "$dist"
}

step "Live for ${DEMO_SECONDS}s, customers at the pace of people, $DEMO_BOTS bots merged in; reclassifications (customer, from -> to, trigger, top probabilities):"
start=$SECONDS
last_events=0; last_t=$SECONDS
"$BIN" -c "$CONFIG" "${GEN[@]}" --to kafka --live-only --pace people --bots "$DEMO_BOTS" \
  --rate "$DEMO_RATE" --duration "${DEMO_SECONDS}s" >"$work/generator.log" 2>&1 &
pids+=($!)
# (process substitution, so that $! is the reader itself and stopping it ends the filter)
"$BIN" -c "$CONFIG" segments show --changes-only --idle 1h --max 100000000 2>/dev/null \
  > >(awk '{ if (++n <= 400 || n % 50 == 0) print; fflush() }') &
pids+=($!)

retrained=0
while (( SECONDS - start < DEMO_SECONDS )); do
  sleep "$DEMO_SUMMARY_EVERY"
  summary
  if (( !retrained && SECONDS - start >= DEMO_SECONDS / 3 )); then
    retrained=1
    step "Midway: training a second model on everything so far (the pipeline keeps serving)"
    echo "(--force promotes it whatever its score, so that the hot swap shows; without it, a model"
    echo " that is worse than the champion on the validation examples is published but not promoted)"
    # Another weight-initialization seed, so the two models differ a little.
    if ! SEGSTREAM__TRAIN__SEED=8 "$BIN" -c "$CONFIG" train --from topics --version model-2 --force \
        >"$work/train-2.log" 2>&1; then
      echo "training the second model failed:"; tail -5 "$work/train-2.log"
    fi
    grep -E '^(epoch|\||Decision|ONNX|History|Transformer)' "$work/train-2.log" || true
    for _ in $(seq 1 30); do
      grep -q 'model-2' <(curl -fs "http://$METRICS_ADDR/metrics" 2>/dev/null | grep '^segstream_model_info{' | grep ' 1$') && break
      sleep 1
    done
    bold "-- the pipeline now serves: $(curl -fs "http://$METRICS_ADDR/metrics" | awk '/^segstream_model_info\{/ && $2 == 1 { print $1 }')"
    echo "   (customers are being rescored in the background with trigger MODEL_UPDATE)"
    # The replaced model stays in the shadow: scored at the same snapshots
    # as the new champion, so the live table compares the two.
    "$BIN" -c "$CONFIG" model shadow model-1 | sed 's/^/   /' || true
  fi
done

summary
dead_letters=$(metric_sum segstream_dead_letters_total)
step "Stopping"
cleanup
pids=()
trap - EXIT

step "What happened"
echo "Segment changes by trigger (the first classification of each customer included):"
"$BIN" -c "$CONFIG" segments show --idle 3s --max 100000000 2>/dev/null \
  | awk '$3 == "->" { t[$5]++ } END { for (k in t) printf "  %-14s %d\n", k, t[k] }'
echo "Risk flags (the live world's days pass in seconds, but each customer acts at the pace of a"
echo "person; the $DEMO_BOTS merged bots browse every 1-2 s; \`segstream bench risk\` measures all rules):"
"$BIN" -c "$CONFIG" segments risk --idle 3s --max 100000000 2>/dev/null >"$work/risk.txt" || true
grep -E ' RAISED ' "$work/risk.txt" | head -20 | sed 's/^/  /' || true
awk -v bots="$DEMO_BOTS" '
  $2 == "RAISED" { if ($1 ~ /^bot[0-9]+$/) bot[$1] = 1; else person[$1] = 1 }
  END {
    nb = 0; for (b in bot) nb++
    np = 0; for (p in person) np++
    printf "  raised on ordinary customers: %d; injected bots flagged: %d of %d%s\n",
      np, nb, bots, (np == 0 && nb == bots) ? " (as it should be)" : " (NOT as it should be)"
  }' "$work/risk.txt"
echo "Current membership: $("$BIN" -c "$CONFIG" segments snapshot --out "$work/segments.ndjson" 2>/dev/null) ($work/segments.ndjson)"
echo "Dead-letter records: $dead_letters"
echo "Models in the registry:"
"$BIN" -c "$CONFIG" model list | sed 's/^/  /'

echo "Pipeline log: $work/pipeline.log"
step "Live quality: every prediction checked against what the customer then did"
echo "Every 7th day of event time (train.sample_every) the pipeline predicted each customer active in the"
echo "last 90 days (train.lookback) as of that day, with the served model, two baselines and, after the"
echo "swap, model-1 in the shadow; once 30 days (train.horizon) had passed it published what they did"
echo "(output.outcomes_topic). Drift compares each cut's customers with the model's training data."
echo "(A shadow's outcomes resolve a horizon after it entered the shadow: on a run longer than 30 days of"
echo "event time after the swap, model-1 appears in the table, compared with model-2 on the same customers.)"
echo "(The first model was trained on this same history: its figures here are in-sample except for its"
echo "validation period. On live traffic they are out of sample.)"
"$BIN" -c "$CONFIG" report --idle 3s --out "$work/report" 2>/dev/null | sed 's/^/  /' \
  || echo "  (no outcomes: the history is shorter than a cut plus the horizon)"
echo
bold "Done. The broker is stopped next; nothing is left running."
