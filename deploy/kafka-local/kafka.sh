#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, combined broker+controller) on 127.0.0.1,
# built only from Maven Central jars (see pom.xml next to this script).
#
#   kafka.sh fetch   copy the broker jars into the cache dir (once)
#   kafka.sh start   fetch if needed, start a fresh broker, print KAFKA_BOOTSTRAP=...
#   kafka.sh stop    stop the broker named by the state file (idempotent)
#   kafka.sh env     print KAFKA_BOOTSTRAP=... of the running broker
#
# Environment:
#   STREAMBID_KAFKA_CACHE  jar cache dir   (default ~/.cache/streambid/kafka-<version>)
#   STREAMBID_KAFKA_STATE  state file      (default .kafka-local/state, relative to cwd)
#   STREAMBID_KAFKA_START_TIMEOUT  seconds to wait for the broker (default 90)
#   STREAMBID_KAFKA_JVM_OPTS  extra JVM flags for the broker (word-split)
#   JAVA_HOME              java is $JAVA_HOME/bin/java if set, else `java` on PATH
#
# Exit codes: 0 ok, 1 broker failed to start / fetch failed, 2 usage, 3 missing tool.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$SCRIPT_DIR/pom.xml"
# Single source of truth for the version: the pom.
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n1)"
CACHE="${STREAMBID_KAFKA_CACHE:-$HOME/.cache/streambid/kafka-$KAFKA_VERSION}"
STATE="${STREAMBID_KAFKA_STATE:-.kafka-local/state}"
START_TIMEOUT="${STREAMBID_KAFKA_START_TIMEOUT:-90}"
MARKER="$CACHE/.streambid-complete"

if [[ -n "${JAVA_HOME:-}" ]]; then JAVA="$JAVA_HOME/bin/java"; else JAVA="java"; fi

log() { printf 'kafka.sh: %s\n' "$*" >&2; }

missing_tool() {
  cat >&2 <<EOF
kafka.sh: $1 not found.
  The local Kafka broker is assembled from Maven Central jars and needs a JDK 17+
  (java) and Maven 3.8+ (mvn), plus python3. On Debian/Ubuntu:
      apt-get install -y openjdk-17-jre-headless maven
  Alternatively point the tests at an existing broker with KAFKA_BOOTSTRAP=host:port.
EOF
  exit 3
}

need_java() {
  if [[ "$JAVA" == */* ]]; then [[ -x "$JAVA" ]] || missing_tool "java ($JAVA)"
  else command -v "$JAVA" >/dev/null 2>&1 || missing_tool "java"; fi
  command -v python3 >/dev/null 2>&1 || missing_tool "python3"
}

# --- state file: KEY=VALUE lines ---------------------------------------------
state_get() {  # state_get KEY -> value or empty
  [[ -f "$STATE" ]] || return 0
  sed -n "s/^$1=//p" "$STATE" | head -n1
}

# True if $1 is a live pid whose command line is a kafka.Kafka started by us
# for workdir $2 (guards against pid reuse).
is_our_broker() {
  local pid="$1" workdir="$2"
  [[ -n "$pid" && -n "$workdir" ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 0  # no procfs: trust kill -0
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "kafka.Kafka $workdir/server.properties"
}

# --- fetch -------------------------------------------------------------------
cmd_fetch() {
  if [[ -f "$MARKER" ]]; then return 0; fi
  command -v mvn >/dev/null 2>&1 || missing_tool "mvn"
  local parent tmp mvnlog t0
  parent="$(dirname "$CACHE")"
  mkdir -p "$parent"
  tmp="$(mktemp -d "$parent/.kafka-fetch.XXXXXX")"
  mvnlog="$tmp.mvn.log"
  t0=$(date +%s.%N)
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $CACHE"
  if ! mvn -q -B -ntp -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" </dev/null >"$mvnlog" 2>&1; then
    cat "$mvnlog" >&2
    rm -rf "$tmp" "$mvnlog"
    log "mvn failed to resolve Kafka $KAFKA_VERSION"
    exit 1
  fi
  rm -f "$mvnlog"
  if ! ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1; then
    rm -rf "$tmp"; log "mvn ran but no kafka_2.13 jar was copied"; exit 1
  fi
  chmod 755 "$tmp"  # mktemp -d makes it 0700
  echo "$KAFKA_VERSION" >"$tmp/.streambid-complete"
  # Atomic publish; if a concurrent fetch won the race, keep theirs.
  if [[ -e "$CACHE" && ! -f "$MARKER" ]]; then rm -rf "$CACHE"; fi
  mv -T "$tmp" "$CACHE" 2>/dev/null || rm -rf "$tmp"
  log "fetch done in $(python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")s"
}

# --- start -------------------------------------------------------------------
free_ports() {  # prints two distinct free loopback ports
  python3 - <<'EOF'
import socket
socks = []
for _ in range(2):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

cluster_id() {  # same format as `kafka-storage random-uuid`, without a JVM start
  python3 -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s); break'
}

# Exit 0 once the broker answers a Metadata request listing >= 1 broker.
# Metadata v4 (Kafka 4.0 dropped v0-v3), stdlib only, so no aiokafka needed.
probe_broker() {
  python3 - "$1" <<'EOF'
import socket, struct, sys
host, port = "127.0.0.1", int(sys.argv[1])
client = b"kafka.sh-probe"
# header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id
# body v4: topics=[] (none), allow_auto_topic_creation=false
req = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">ib", 0, 0)
try:
    with socket.create_connection((host, port), timeout=2) as s:
        s.settimeout(3)
        s.sendall(struct.pack(">i", len(req)) + req)
        buf = b""
        while len(buf) < 16:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit(1)
            buf += chunk
    _size, corr, _throttle, nbrokers = struct.unpack(">iiii", buf[:16])
    sys.exit(0 if corr == 7 and nbrokers >= 1 else 1)
except (OSError, struct.error):
    sys.exit(1)
EOF
}

cmd_start() {
  need_java
  local old_pid old_dir
  old_pid="$(state_get KAFKA_PID)"; old_dir="$(state_get KAFKA_WORKDIR)"
  if is_our_broker "$old_pid" "$old_dir"; then
    log "broker already running (pid $old_pid); reusing it"
    echo "KAFKA_BOOTSTRAP=$(state_get KAFKA_BOOTSTRAP)"
    return 0
  fi
  if [[ -f "$STATE" ]]; then cmd_stop; fi  # stale state: clean leftovers
  # a broker whose pid cannot be written down could never be stopped by this script: check before starting one
  if [[ -e "$STATE" && ! -f "$STATE" ]] || ! mkdir -p "$(dirname "$STATE")" 2>/dev/null \
      || ! ( : >>"$STATE" ) 2>/dev/null; then
    log "cannot write the state file $STATE: set STREAMBID_KAFKA_STATE to a file path you can write"
    exit 1
  fi

  cmd_fetch
  local t0 workdir port cport pid bootstrap
  t0=$(date +%s.%N)
  workdir="$(mktemp -d "${TMPDIR:-/tmp}/streambid-kafka.XXXXXX")"
  read -r port cport < <(free_ports)
  bootstrap="127.0.0.1:$port"

  cat >"$workdir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$workdir/data
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.segment.bytes=16777216
log.retention.hours=24
log.retention.check.interval.ms=60000
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF

  cat >"$workdir/log4j2.properties" <<EOF
status = warn
name = streambid-kafka-local
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $workdir/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF

  local jvm_log=(-Dlog4j2.configurationFile="$workdir/log4j2.properties")
  if ! "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 "${jvm_log[@]}" -cp "$CACHE/*" kafka.tools.StorageTool format \
        -t "$(cluster_id)" -c "$workdir/server.properties" \
        </dev/null >"$workdir/format.log" 2>&1; then
    cat "$workdir/format.log" >&2
    rm -rf "$workdir"
    log "kafka-storage format failed"
    exit 1
  fi

  local extra_opts=()
  read -r -a extra_opts <<<"${STREAMBID_KAFKA_JVM_OPTS:-}"
  mkdir -p "$(dirname "$STATE")"
  # setsid + redirections: fully detached, so callers capturing our stdout
  # (subprocess.run(capture_output=True)) don't wait on the JVM's pipes.
  # C1-only JIT: ~1s faster startup; plenty for a test broker.
  setsid "$JAVA" -Xmx512m -Xms128m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:TieredStopAtLevel=1 \
      -Djava.awt.headless=true "${jvm_log[@]}" "${extra_opts[@]}" \
      -cp "$CACHE/*" kafka.Kafka "$workdir/server.properties" \
      </dev/null >"$workdir/stdout.log" 2>&1 &
  pid=$!
  printf 'KAFKA_PID=%s\nKAFKA_BOOTSTRAP=%s\nKAFKA_WORKDIR=%s\nKAFKA_VERSION=%s\n' \
    "$pid" "$bootstrap" "$workdir" "$KAFKA_VERSION" >"$STATE"

  local deadline=$((SECONDS + START_TIMEOUT))
  until probe_broker "$port"; do
    if ! kill -0 "$pid" 2>/dev/null || (( SECONDS >= deadline )); then
      if kill -0 "$pid" 2>/dev/null; then
        log "broker did not become ready within ${START_TIMEOUT}s"
      else
        log "broker process exited during startup"
      fi
      log "---- tail of $workdir/server.log ----"
      tail -n 60 "$workdir/server.log" >&2 2>/dev/null || true
      log "---- tail of $workdir/stdout.log ----"
      tail -n 30 "$workdir/stdout.log" >&2 2>/dev/null || true
      cmd_stop
      exit 1
    fi
    sleep 0.25
  done
  log "broker pid $pid ready in $(python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")s (logs: $workdir/server.log)"
  echo "KAFKA_BOOTSTRAP=$bootstrap"
}

# --- stop --------------------------------------------------------------------
cmd_stop() {
  [[ -f "$STATE" ]] || return 0
  local pid workdir i
  pid="$(state_get KAFKA_PID)"; workdir="$(state_get KAFKA_WORKDIR)"
  if is_our_broker "$pid" "$workdir"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 80; i++)); do  # 20s
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "broker pid $pid ignored SIGTERM for 20s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
  fi
  # Only ever delete a dir we created.
  if [[ -n "$workdir" && "$workdir" == */streambid-kafka.* && -d "$workdir" ]]; then
    rm -rf "$workdir"
  fi
  rm -f "$STATE"
}

# --- env ---------------------------------------------------------------------
cmd_env() {
  local pid workdir
  pid="$(state_get KAFKA_PID)"; workdir="$(state_get KAFKA_WORKDIR)"
  if ! is_our_broker "$pid" "$workdir"; then
    log "no running broker (state file: $STATE)"
    exit 1
  fi
  echo "KAFKA_BOOTSTRAP=$(state_get KAFKA_BOOTSTRAP)"
}

case "${1:-}" in
  fetch) need_java; cmd_fetch ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  env) cmd_env ;;
  *) echo "usage: $0 {fetch|start|stop|env}" >&2; exit 2 ;;
esac
