#!/usr/bin/env bash
# Local single-node Kafka (KRaft) for segstream development, tests and demo.
#
# The broker runs straight from Maven Central jars (no Kafka tarball, no
# Docker): `fetch` resolves deploy/local/pom.xml into a cache directory and
# `up` starts `java -cp "libs/*" kafka.Kafka` in the background.
#
# Usage: deploy/local/kafka.sh <command> [args]
#
#   fetch                          download the broker jars (once, cached)
#   up                             start the broker and wait until it serves
#                                  requests (no-op when already healthy)
#   down [--purge]                 stop the broker; --purge also deletes the
#                                  data dir (topics, offsets, logs)
#   topic NAME PARTITIONS [k=v...] create a topic if it does not exist
#                                  (replication factor 1, optional configs)
#   status                         print broker state; exit 3 if not running
#
# Environment (all optional):
#   SEGSTREAM_CACHE        cache root              (~/.cache/segstream)
#   KAFKA_VERSION          Kafka version           (<kafka.version> in pom.xml)
#   KAFKA_PORT             PLAINTEXT port          (19092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port   (19093)
#   KAFKA_SASL_PORT        SASL_SSL port           (19094)
#   KAFKA_DATA_DIR         data dir: config, logs, pid (deploy/local/.data)
#   KAFKA_HEAP_OPTS        broker heap             (-Xms256m -Xmx512m)
#   KAFKA_READY_TIMEOUT    seconds to wait in `up` (90)
#   JAVA                   java binary             (java from PATH, 17+)
set -euo pipefail

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
POM="$SCRIPT_DIR/pom.xml"

# The pom is the single source of truth for the version; KAFKA_VERSION may
# override it (it is passed to Maven as -Dkafka.version).
POM_KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
KAFKA_VERSION="${KAFKA_VERSION:-$POM_KAFKA_VERSION}"

CACHE_DIR="${SEGSTREAM_CACHE:-$HOME/.cache/segstream}"
KAFKA_HOME="$CACHE_DIR/kafka-$KAFKA_VERSION"
LIBS_DIR="$KAFKA_HOME/libs"
# Written after a complete `fetch`; its presence means the jars are usable.
FETCH_MARKER="$LIBS_DIR/.complete"

KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_SASL_PORT="${KAFKA_SASL_PORT:-19094}"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"

# A relative KAFKA_DATA_DIR is taken relative to the current directory; the
# default lives in the repo (and is gitignored).
DATA_DIR="${KAFKA_DATA_DIR:-$REPO_ROOT/deploy/local/.data}"
[[ "$DATA_DIR" == /* ]] || DATA_DIR="$PWD/$DATA_DIR"
LOG_DIR="$DATA_DIR/kafka-logs"        # Kafka's log.dirs (topic partitions)
CONFIG_FILE="$DATA_DIR/server.properties"
PID_FILE="$DATA_DIR/kafka.pid"
SERVER_LOG="$DATA_DIR/server.log"     # broker log4j output
CONSOLE_LOG="$DATA_DIR/console.log"   # broker stdout/stderr (JVM errors)
TOOLS_CONFIG="$DATA_DIR/tools.properties"
TLS_DIR="$DATA_DIR/tls"               # CA and broker certificate (SASL_SSL)
SASL_DIR="$DATA_DIR/sasl"             # SCRAM users' passwords, one file each
SECURITY_MARKER="$DATA_DIR/.acls"     # the ACLs below were granted
# The SCRAM user segstream runs as in the security tests, and the prefix of
# the topics, group and transactional ids its ACLs grant.
SASL_USER=segstream
SASL_PREFIX=sasl-
# Set when this run formatted the storage (the SCRAM user came with it).
SCRAM_AT_FORMAT=false

JAVA="${JAVA:-java}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
KAFKA_READY_TIMEOUT="${KAFKA_READY_TIMEOUT:-90}"
STOP_TIMEOUT=30
LOG4J_CONFIG="$SCRIPT_DIR/log4j2.xml"

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

log() { printf 'kafka: %s\n' "$*" >&2; }
die() { printf 'kafka: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '/^# Usage:/,/^# Environment/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
}

require_java() {
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found (install a JDK 17+ or set JAVA)"
}

# Run a Kafka CLI class (StorageTool, TopicCommand, ...) with a small heap.
# Tool logging goes to stderr at WARN so it never touches server.log.
kafka_tool() {
  local main_class="$1"; shift
  "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
    -Dsegstream.log.appender=Console -Dsegstream.log.level=WARN \
    -cp "$LIBS_DIR/*" "$main_class" "$@"
}

# Short client timeouts for the CLI tools, so that probing a broker that is
# not up yet fails within seconds instead of the default 60 s.
write_tools_config() {
  mkdir -p "$DATA_DIR"
  cat >"$TOOLS_CONFIG" <<EOF
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF
}

topic_command() {
  [[ -f "$TOOLS_CONFIG" ]] || write_tools_config
  kafka_tool org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$BOOTSTRAP" --command-config "$TOOLS_CONFIG" "$@"
}

# True while process $1 exists and is not a zombie. A zombie (exited but not
# yet reaped, e.g. when PID 1 in a container does not reap orphans) would
# otherwise look alive to `kill -0` forever.
is_alive() {
  local state
  # Field 3 of /proc/PID/stat, after the "(comm)" field that may hold spaces.
  state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# Print the pid of our broker if it is running, else nothing (exit 1).
# Guards against a stale pid file whose pid now belongs to another process.
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(<"$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  is_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
  echo "$pid"
}

# True if something accepts TCP connections on 127.0.0.1:$1 (bash /dev/tcp,
# no extra tools needed).
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A broker is healthy when it answers a metadata request (list topics).
healthy() {
  topic_command --list >/dev/null 2>&1
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

# Download the broker + tools jars into $LIBS_DIR via Maven (uses ~/.m2 as
# the local repository). Skipped when a previous fetch completed.
cmd_fetch() {
  if [[ -f "$FETCH_MARKER" ]]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found (install Maven 3.8+)"
  log "fetching Kafka $KAFKA_VERSION jars into $LIBS_DIR"
  local start=$SECONDS
  # Copy into a temporary dir and rename, so an interrupted fetch never
  # leaves a half-filled libs dir that looks complete. Maven's output (errors
  # only, with -q) goes to stderr to keep stdout clean, minus the ANSI colour
  # codes Debian's Maven prints even when not on a terminal.
  local tmp="$KAFKA_HOME/libs.tmp.$$"
  rm -rf "$KAFKA_HOME"/libs.tmp.*   # leftovers of failed fetches
  mkdir -p "$KAFKA_HOME"
  mvn -q -B -Dstyle.color=never -f "$POM" \
    -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies \
    -DincludeScope=runtime \
    -DoutputDirectory="$tmp" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2
  compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || die "fetch produced no kafka jar in $tmp"
  touch "$tmp/.complete"
  rm -rf "$LIBS_DIR"
  mv "$tmp" "$LIBS_DIR"
  log "fetched $(find "$LIBS_DIR" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS_DIR" | cut -f1)) in $((SECONDS - start))s"
}

# A random secret (hex), for passwords the setup generates.
random_secret() {
  od -An -N24 -tx1 /dev/urandom | tr -d ' \n'
}

# A CA and a broker certificate for 127.0.0.1/localhost, made once per data
# dir with openssl: tls/ca.pem is what clients trust (ssl.ca.location),
# tls/broker.p12 the broker's keystore.
ensure_tls() {
  [[ -f "$TLS_DIR/broker.p12" && -f "$TLS_DIR/ca.pem" && -f "$TLS_DIR/keystore.password" ]] && return 0
  command -v openssl >/dev/null 2>&1 || die "openssl not found (needed for the SASL_SSL listener's certificates)"
  log "generating a CA and a broker certificate in $TLS_DIR"
  rm -rf "$TLS_DIR"
  mkdir -p "$TLS_DIR"
  chmod 700 "$TLS_DIR"
  local ext="$TLS_DIR/broker.ext"
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >"$ext"
  {
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=segstream local CA" \
      -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout "$TLS_DIR/broker.key" -out "$TLS_DIR/broker.csr"
    openssl x509 -req -in "$TLS_DIR/broker.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
      -CAcreateserial -days 3650 -extfile "$ext" -out "$TLS_DIR/broker.pem"
  } >/dev/null 2>&1 || die "openssl could not generate the certificates"
  local password
  password="$(random_secret)"
  openssl pkcs12 -export -in "$TLS_DIR/broker.pem" -inkey "$TLS_DIR/broker.key" \
    -certfile "$TLS_DIR/ca.pem" -name broker -out "$TLS_DIR/broker.p12" \
    -passout "pass:$password" >/dev/null 2>&1 || die "openssl could not write the broker keystore"
  printf '%s' "$password" >"$TLS_DIR/keystore.password"
  chmod 600 "$TLS_DIR"/*.key "$TLS_DIR/keystore.password"
}

# The SCRAM user's password, generated once per data dir.
sasl_password() {
  if [[ ! -s "$SASL_DIR/$SASL_USER.password" ]]; then
    mkdir -p "$SASL_DIR"
    chmod 700 "$SASL_DIR"
    random_secret >"$SASL_DIR/$SASL_USER.password"
    chmod 600 "$SASL_DIR/$SASL_USER.password"
  fi
  cat "$SASL_DIR/$SASL_USER.password"
}

# Render the server.properties template for the current ports/data dir.
write_server_config() {
  mkdir -p "$DATA_DIR"
  ensure_tls
  sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
      -e "s|@KAFKA_CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
      -e "s|@KAFKA_SASL_PORT@|$KAFKA_SASL_PORT|g" \
      -e "s|@KAFKA_LOG_DIR@|$LOG_DIR|g" \
      -e "s|@KAFKA_TLS_DIR@|$TLS_DIR|g" \
      -e "s|@KAFKA_KEYSTORE_PASSWORD@|$(<"$TLS_DIR/keystore.password")|g" \
      "$SCRIPT_DIR/server.properties" >"$CONFIG_FILE"
  chmod 600 "$CONFIG_FILE"
}

# The SCRAM user and its ACLs, once per data dir, over the PLAINTEXT
# listener (whose principal is a super user). A data dir formatted by this
# script already has the user; one formatted before it gets it here.
ensure_security() {
  [[ -f "$SECURITY_MARKER" ]] && return 0
  if [[ "$SCRAM_AT_FORMAT" != true ]]; then
    kafka_tool org.apache.kafka.tools.ConfigCommand \
      --bootstrap-server "$BOOTSTRAP" --command-config "$TOOLS_CONFIG" \
      --alter --entity-type users --entity-name "$SASL_USER" \
      --add-config "SCRAM-SHA-512=[password=$(sasl_password)]" >/dev/null \
      || die "could not create the SCRAM user $SASL_USER"
  fi
  kafka_tool org.apache.kafka.tools.AclCommand \
    --bootstrap-server "$BOOTSTRAP" --command-config "$TOOLS_CONFIG" \
    --add --allow-principal "User:$SASL_USER" --operation All \
    --resource-pattern-type prefixed \
    --topic "$SASL_PREFIX" --group "$SASL_PREFIX" --transactional-id "$SASL_PREFIX" >/dev/null \
    || die "could not grant the ACLs of User:$SASL_USER"
  touch "$SECURITY_MARKER"
  log "SCRAM user $SASL_USER may use topics, groups and transactional ids starting with $SASL_PREFIX"
}

# Format KRaft storage with a fresh random cluster id, once per data dir.
format_storage_if_needed() {
  if [[ -f "$LOG_DIR/meta.properties" ]]; then
    return 0
  fi
  local cluster_id
  cluster_id="$(kafka_tool kafka.tools.StorageTool random-uuid)"
  log "formatting $LOG_DIR (cluster id $cluster_id)"
  kafka_tool kafka.tools.StorageTool format \
    --config "$CONFIG_FILE" --cluster-id "$cluster_id" --ignore-formatted \
    --add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$(sasl_password)]" >/dev/null
  SCRAM_AT_FORMAT=true
}

# Print the JVM console output and the tail of this run's server.log
# (starting at byte offset $1) to stderr.
show_startup_log() {
  local offset="$1"
  if [[ -s "$CONSOLE_LOG" ]]; then
    tail -n 20 "$CONSOLE_LOG" >&2
  fi
  if [[ -f "$SERVER_LOG" ]]; then
    tail -c "+$((offset + 1))" "$SERVER_LOG" | tail -n 20 >&2
  fi
}

cmd_up() {
  require_java

  local pid
  if pid="$(running_pid)"; then
    if healthy; then
      log "already running (pid $pid)"
      echo "Kafka $KAFKA_VERSION is up: bootstrap servers $BOOTSTRAP"
      return 0
    fi
    die "broker pid $pid is running but not answering on $BOOTSTRAP; see $SERVER_LOG (try: $0 down)"
  fi
  rm -f "$PID_FILE"

  # Someone else (another checkout, a stray broker) owns the port.
  local port
  for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SASL_PORT"; do
    if port_open "$port"; then
      die "port $port is already in use by another process (set KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
    fi
  done

  cmd_fetch
  write_server_config
  write_tools_config
  format_storage_if_needed

  log "starting Kafka $KAFKA_VERSION (data dir $DATA_DIR)"
  local start=$SECONDS
  # server.log is appended to across runs; remember where this run starts so
  # that failures show only its own lines.
  local log_offset=0
  [[ -f "$SERVER_LOG" ]] && log_offset="$(wc -c <"$SERVER_LOG")"
  # setsid: detach from the caller's process group/terminal so the broker
  # outlives this script and a Ctrl-C in the shell does not kill it; it is
  # stopped explicitly with `down`.
  # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS is a list of JVM flags
  setsid "$JAVA" $KAFKA_HEAP_OPTS \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
    -Dkafka.logs.dir="$DATA_DIR" \
    -cp "$LIBS_DIR/*" kafka.Kafka "$CONFIG_FILE" \
    </dev/null >"$CONSOLE_LOG" 2>&1 &
  pid=$!
  echo "$pid" >"$PID_FILE"

  # Wait for readiness: cheap TCP probe first, then a real metadata request.
  local deadline=$((SECONDS + KAFKA_READY_TIMEOUT))
  while :; do
    if ! is_alive "$pid"; then
      rm -f "$PID_FILE"
      log "broker exited during startup; last log lines:"
      show_startup_log "$log_offset"
      die "Kafka failed to start"
    fi
    if port_open "$KAFKA_PORT" && healthy; then
      break
    fi
    if ((SECONDS >= deadline)); then
      log "broker not ready after ${KAFKA_READY_TIMEOUT}s; last log lines:"
      show_startup_log "$log_offset"
      cmd_down
      die "Kafka did not become ready"
    fi
    sleep 1
  done

  ensure_security
  log "ready in $((SECONDS - start))s (pid $pid, log $SERVER_LOG)"
  echo "Kafka $KAFKA_VERSION is up: bootstrap servers $BOOTSTRAP"
}

cmd_down() {
  local purge=false
  case "${1:-}" in
    "") ;;
    --purge) purge=true ;;
    *) die "usage: $0 down [--purge]" ;;
  esac

  local pid
  if pid="$(running_pid)"; then
    log "stopping broker (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while is_alive "$pid" && ((SECONDS < deadline)); do
      sleep 0.5
    done
    if is_alive "$pid"; then
      log "broker did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      # Give the kernel a moment to tear it down so the ports are free.
      deadline=$((SECONDS + 10))
      while is_alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
      ! is_alive "$pid" || die "broker pid $pid survived SIGKILL"
    fi
    log "stopped"
  else
    log "not running"
  fi
  rm -f "$PID_FILE"

  if $purge; then
    log "removing $DATA_DIR"
    rm -rf "$DATA_DIR"
  fi
}

cmd_topic() {
  (($# >= 2)) || die "usage: $0 topic NAME PARTITIONS [key=value ...]"
  local name="$1" partitions="$2"; shift 2
  [[ "$partitions" =~ ^[1-9][0-9]*$ ]] || die "PARTITIONS must be a positive integer, got '$partitions'"

  local args=(--create --if-not-exists --topic "$name"
              --partitions "$partitions" --replication-factor 1)
  local kv
  for kv in "$@"; do
    [[ "$kv" == ?*=* ]] || die "topic config must be key=value, got '$kv'"
    args+=(--config "$kv")
  done

  running_pid >/dev/null || die "broker is not running (run: $0 up)"
  topic_command "${args[@]}" >/dev/null
  log "topic $name (partitions=$partitions${*:+, $*}) ok"
}

cmd_status() {
  echo "version:    $KAFKA_VERSION"
  echo "jars:       $LIBS_DIR$([[ -f "$FETCH_MARKER" ]] || echo ' (not fetched)')"
  echo "data dir:   $DATA_DIR"
  echo "bootstrap:  $BOOTSTRAP"
  echo "sasl_ssl:   127.0.0.1:$KAFKA_SASL_PORT (SCRAM-SHA-512 user $SASL_USER, password in $SASL_DIR/$SASL_USER.password, CA $TLS_DIR/ca.pem)"
  local pid
  if ! pid="$(running_pid)"; then
    echo "state:      stopped"
    return 3
  fi
  if healthy; then
    echo "state:      running (pid $pid)"
    local topics
    topics="$(topic_command --list | sed '/^[[:space:]]*$/d')"
    echo "topics:     ${topics:-(none)}" | sed '2,$s/^/            /'
  else
    echo "state:      unhealthy (pid $pid alive but not answering; see $SERVER_LOG)"
    return 1
  fi
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    fetch)  cmd_fetch "$@" ;;
    up)     cmd_up "$@" ;;
    down)   cmd_down "$@" ;;
    topic)  cmd_topic "$@" ;;
    status) cmd_status "$@" ;;
    -h|--help|help) usage ;;
    *) usage; exit 2 ;;
  esac
}

main "$@"
