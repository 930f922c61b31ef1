#!/usr/bin/env bash
# Run a command against a freshly started local Kafka broker, then stop the
# broker whatever happens, and exit with the command's status.
#
# Usage: deploy/local/with-kafka.sh CMD [ARGS...]
#
# The broker is configured through the same environment variables as
# deploy/local/kafka.sh (KAFKA_PORT, KAFKA_DATA_DIR, SEGSTREAM_CACHE, ...).
# The bootstrap address is exported to CMD as SEGSTREAM_TEST_BOOTSTRAP unless
# it is already set.
set -euo pipefail

(($# > 0)) || { echo "usage: $0 CMD [ARGS...]" >&2; exit 2; }

KAFKA_SH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kafka.sh"

# Stop the broker on every exit path: success, failure, Ctrl-C, SIGTERM.
# The command's exit status is preserved (a failing `down` only warns).
# shellcheck disable=SC2317 # only reached through the trap
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  "$KAFKA_SH" down || echo "with-kafka: warning: stopping Kafka failed" >&2
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$KAFKA_SH" up
export SEGSTREAM_TEST_BOOTSTRAP="${SEGSTREAM_TEST_BOOTSTRAP:-127.0.0.1:${KAFKA_PORT:-19092}}"
# The SASL_SSL listener and the data dir holding its CA and the SCRAM
# user's password (tests/security.rs), as kafka.sh sets them up.
export SEGSTREAM_TEST_SASL_BOOTSTRAP="${SEGSTREAM_TEST_SASL_BOOTSTRAP:-127.0.0.1:${KAFKA_SASL_PORT:-19094}}"
data_dir="${KAFKA_DATA_DIR:-$(dirname "$KAFKA_SH")/.data}"
[[ "$data_dir" == /* ]] || data_dir="$PWD/$data_dir"
export SEGSTREAM_TEST_KAFKA_DATA="${SEGSTREAM_TEST_KAFKA_DATA:-$data_dir}"

# Not `exec`: the trap must run after the command finishes.
status=0
"$@" || status=$?
exit "$status"
