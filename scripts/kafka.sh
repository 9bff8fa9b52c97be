#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, combined broker+controller) on 127.0.0.1 for
# tests and local work, without Docker: the broker jars come from Maven Central.
#
#   scripts/kafka.sh start  [--port N] [--controller-port N] [--data-dir D]
#   scripts/kafka.sh stop   [--port N] [--data-dir D] [--clean]
#   scripts/kafka.sh status [--port N] [--data-dir D]
#   scripts/kafka.sh bootstrap [--port N]
#   scripts/kafka.sh pid [--port N] [--data-dir D]   (the running broker's pid, for signals)
#
# `start` prints the bootstrap address (127.0.0.1:PORT) as its last stdout line,
# once the broker answers Admin API requests. `stop` keeps the data dir (topics
# and committed offsets survive a restart) unless --clean is given.
#
# Environment:
#   KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093),
#   KAFKA_DATA_DIR (${TMPDIR:-/tmp}/avfuse-kafka-$KAFKA_PORT),
#   KAFKA_HEAP (-Xms128m -Xmx512m), KAFKA_OPTS (extra broker JVM flags),
#   KAFKA_JIT_OPTS (-XX:TieredStopAtLevel=1: C1 only, ~40% less CPU to start;
#     set it empty for peak throughput), KAFKA_CDS (1: keep a class-data-sharing
#     archive of the broker's classes in the cache, dumped when the first broker
#     stops; later starts map it and boot faster; 0 disables),
#   KAFKA_START_TIMEOUT (90 s), AVFUSE_KAFKA_VERSION (4.4.0),
#   AVFUSE_KAFKA_CACHE ($HOME/.cache/avfuse/kafka-$KAFKA_VERSION): jars, reused.
# Needs: java 17+, and mvn for the first run (the cache is reused afterwards).
set -euo pipefail

KAFKA_VERSION="${AVFUSE_KAFKA_VERSION:-4.4.0}"
# Matches the log4j-core that kafka-server $KAFKA_VERSION depends on.
LOG4J_VERSION="${KAFKA_LOG4J_VERSION:-2.25.5}"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

PROG="$(basename "$0")"
die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
  exit "${1:-2}"
}

# ---------------------------------------------------------------- arguments
[[ $# -ge 1 ]] || usage
CMD="$1"
shift
PORT="${KAFKA_PORT:-9092}"
CPORT="${KAFKA_CONTROLLER_PORT:-}"
DATA_DIR="${KAFKA_DATA_DIR:-}"
CLEAN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) PORT="${2:?--port needs a value}"; shift 2 ;;
    --port=*) PORT="${1#*=}"; shift ;;
    --controller-port) CPORT="${2:?--controller-port needs a value}"; shift 2 ;;
    --controller-port=*) CPORT="${1#*=}"; shift ;;
    --data-dir) DATA_DIR="${2:?--data-dir needs a value}"; shift 2 ;;
    --data-dir=*) DATA_DIR="${1#*=}"; shift ;;
    --clean) CLEAN=1; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
[[ "$PORT" =~ ^[0-9]+$ ]] || die "bad port: $PORT"
CPORT="${CPORT:-9093}"
[[ "$CPORT" =~ ^[0-9]+$ ]] || die "bad controller port: $CPORT"
[[ "$PORT" != "$CPORT" ]] || die "broker and controller ports must differ ($PORT)"
DATA_DIR="${DATA_DIR:-${TMPDIR:-/tmp}/avfuse-kafka-$PORT}"
HEAP="${KAFKA_HEAP:--Xms128m -Xmx512m}"
JIT_OPTS="${KAFKA_JIT_OPTS--XX:TieredStopAtLevel=1}"
USE_CDS="${KAFKA_CDS:-1}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
CACHE="${AVFUSE_KAFKA_CACHE:-$HOME/.cache/avfuse/kafka-$KAFKA_VERSION}"
ADDR="127.0.0.1:$PORT"
PID_FILE="$DATA_DIR/kafka.pid"
READY_FILE="$DATA_DIR/kafka.ready"
LOG_FILE="$DATA_DIR/kafka.log"
PROPS="$DATA_DIR/server.properties"
CDS_PENDING="$DATA_DIR/cds-pending"

# ---------------------------------------------------------------- process helpers
# Pid of our broker for this data dir, if it is alive (zombies count as dead).
broker_pid() {
  local pid state
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/stat" ]] || return 1
  state="$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [[ -n "$state" && "$state" != Z && "$state" != X ]] || return 1
  # Guard against pid reuse: it must be a kafka.Kafka running our config.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $PROPS" || return 1
  echo "$pid"
}

port_open() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- jars (Maven)
CP="$CACHE/*:$CACHE/probe"

write_pom() {
  cat >"$1" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>avfuse.local</groupId>
  <artifactId>avfuse-kafka-broker</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- kafka.Kafka (broker) and kafka.tools.StorageTool; pulls kafka-server,
         kafka-raft, kafka-metadata, kafka-storage, log4j-core, slf4j-api, ... -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- slf4j 1.x -> log4j2 binding (what Kafka's own distribution ships). -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
}

# Readiness probe: Admin.describeCluster + listTopics, retried in one JVM until
# the deadline; exits 2 at once if the broker process goes away.
PROBE_SRC='import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;

public class AvfuseKafkaProbe {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        long deadline = System.currentTimeMillis() + Long.parseLong(args[1]) * 1000L;
        long brokerPid = args.length > 2 ? Long.parseLong(args[2]) : -1;
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("request.timeout.ms", "3000");
        p.put("default.api.timeout.ms", "5000");
        p.put("reconnect.backoff.ms", "100");
        p.put("reconnect.backoff.max.ms", "500");
        Exception last = null;
        try (Admin admin = Admin.create(p)) {
            while (true) {
                try {
                    long wait = Math.max(100, Math.min(5000, deadline - System.currentTimeMillis()));
                    int nodes = admin.describeCluster().nodes().get(wait, TimeUnit.MILLISECONDS).size();
                    admin.listTopics().names().get(wait, TimeUnit.MILLISECONDS);
                    if (nodes > 0) {
                        System.out.println("ready");
                        return;
                    }
                } catch (Exception e) {
                    last = e;
                }
                if (brokerPid > 0 && !ProcessHandle.of(brokerPid).map(ProcessHandle::isAlive).orElse(false)) {
                    System.err.println("broker process " + brokerPid + " exited");
                    System.exit(2);
                }
                if (System.currentTimeMillis() > deadline) {
                    System.err.println("broker not ready: " + last);
                    System.exit(1);
                }
                Thread.sleep(200);
            }
        }
    }
}'

ensure_jars() {
  local marker="$CACHE/.complete"
  if [[ ! -f "$marker" ]]; then
    command -v mvn >/dev/null || die "mvn not found (needed once to fetch Kafka $KAFKA_VERSION into $CACHE)"
    mkdir -p "$(dirname "$CACHE")"
    exec 8>"$CACHE.lock"
    flock 8
    if [[ ! -f "$marker" ]]; then
      local tmp
      tmp="$(mktemp -d "$CACHE.tmp.XXXXXX")"
      write_pom "$tmp/pom.xml"
      log "fetching Apache Kafka $KAFKA_VERSION jars with Maven into $CACHE ..."
      if ! mvn -q -B -f "$tmp/pom.xml" "$DEP_PLUGIN:copy-dependencies" \
          -DincludeScope=runtime -DoutputDirectory="$tmp/jars" >"$tmp/mvn.log" 2>&1; then
        tail -n 30 "$tmp/mvn.log" >&2
        rm -rf "$tmp"
        die "Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
      fi
      rm -rf "$CACHE"
      mkdir -p "$CACHE"
      mv "$tmp"/jars/*.jar "$CACHE"/
      cp "$tmp/pom.xml" "$CACHE/pom.xml"
      rm -rf "$tmp"
      (cd "$CACHE" && ls -1 ./*.jar) >"$marker"
    fi
    flock -u 8
    exec 8>&-
  fi
  # The probe is compiled once per cache (recompiled if its source changes).
  if [[ ! -f "$CACHE/probe/AvfuseKafkaProbe.class" ]] \
      || ! printf '%s\n' "$PROBE_SRC" | cmp -s - "$CACHE/probe/AvfuseKafkaProbe.java"; then
    command -v javac >/dev/null || die "javac not found (a JDK 17+ is needed)"
    local ptmp
    ptmp="$(mktemp -d "$CACHE/probe.tmp.XXXXXX")"
    printf '%s\n' "$PROBE_SRC" >"$ptmp/AvfuseKafkaProbe.java"
    javac -nowarn -cp "$CACHE/*" -d "$ptmp" "$ptmp/AvfuseKafkaProbe.java" >&2 \
      || { rm -rf "$ptmp"; die "could not compile the readiness probe"; }
    rm -rf "$CACHE/probe"
    mv "$ptmp" "$CACHE/probe"
  fi
}

# ---------------------------------------------------------------- CDS archive
# AppCDS archive of the broker's classes, per JDK build (an archive made by
# another JVM build is ignored by -Xshare:auto, but would never be replaced).
cds_archive() {
  local java_bin key
  java_bin="$(readlink -f "$(command -v java)")"
  key="$( { echo "$java_bin"; cat "${java_bin%/bin/java}/release" 2>/dev/null || true; } | cksum | cut -d' ' -f1)"
  echo "$CACHE/cds/kafka-broker-$key.jsa"
}

# Prints the JVM flags that use the archive, or that dump it when the broker
# exits (on the first `stop`; `stop` then moves it into place).
cds_opts() {
  if [[ -f "$CDS_PENDING" ]]; then  # left by a broker that was not stopped by us
    rm -f "$(cat "$CDS_PENDING")" "$CDS_PENDING"
  fi
  [[ "$USE_CDS" == 1 ]] || return 0
  local jsa
  jsa="$(cds_archive)"
  if [[ -s "$jsa" ]]; then
    echo "-XX:SharedArchiveFile=$jsa -Xlog:cds=off -Xlog:cds+dynamic=off"
  else
    mkdir -p "${jsa%/*}"
    echo "$jsa.$$.tmp" >"$CDS_PENDING"
    echo "-XX:ArchiveClassesAtExit=$jsa.$$.tmp -Xlog:cds=off -Xlog:cds+dynamic=off"
  fi
}

# After the broker exited: keep a freshly dumped archive (only if the JVM
# exited by itself, so the dump is complete), drop it otherwise.
cds_collect() {
  local exited_cleanly="$1" tmp
  [[ -f "$CDS_PENDING" ]] || return 0
  tmp="$(cat "$CDS_PENDING")"
  rm -f "$CDS_PENDING"
  [[ "$tmp" == *.jsa.*.tmp ]] || return 0
  if [[ "$exited_cleanly" == 1 && -s "$tmp" ]]; then
    mv -f "$tmp" "${tmp%.*.tmp}"
    log "saved class-data-sharing archive ${tmp%.*.tmp} (faster restarts)"
  else
    rm -f "$tmp"
  fi
}

# ---------------------------------------------------------------- config
write_config() {
  mkdir -p "$DATA_DIR/logs"
  cat >"$PROPS" <<EOF
# Generated by scripts/kafka.sh; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA_DIR/logs
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.recovery.threads.per.data.dir=2
EOF
  cat >"$DATA_DIR/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
EOF
  cat >"$DATA_DIR/log4j2-tools.properties" <<'EOF'
status = error
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m (%c)%n
rootLogger.level = ERROR
rootLogger.appenderRef.err.ref = STDERR
EOF
}

# A Kafka Uuid: 16 random bytes, URL-safe base64 without padding, not starting
# with '-' (what Uuid.randomUuid() guarantees, so it is safe on command lines).
random_cluster_id() {
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" != -* && ${#id} -eq 22 ]] && break
  done
  echo "$id"
}

format_storage() {
  [[ -f "$DATA_DIR/logs/meta.properties" ]] && return 0
  local cid
  cid="$(random_cluster_id)"
  log "formatting $DATA_DIR/logs (cluster id $cid)"
  if ! java -Dlog4j2.configurationFile="$DATA_DIR/log4j2-tools.properties" -cp "$CP" \
      kafka.tools.StorageTool format -t "$cid" -c "$PROPS" >>"$LOG_FILE" 2>&1; then
    tail -n 20 "$LOG_FILE" >&2
    die "kafka-storage format failed (log: $LOG_FILE)"
  fi
}

# ---------------------------------------------------------------- commands
# Waits (at most START_TIMEOUT s) until broker $1 answers Admin API requests;
# the probe JVM can start while the broker is still booting: it retries.
wait_ready() {
  local pid="$1" out
  if ! out="$(timeout $((START_TIMEOUT + 30)) java \
      -Dlog4j2.configurationFile="$DATA_DIR/log4j2-tools.properties" \
      -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto -cp "$CP" \
      AvfuseKafkaProbe "$ADDR" "$START_TIMEOUT" "$pid" 2>&1 9>&-)"; then
    tail -n 40 "$LOG_FILE" >&2
    if broker_pid >/dev/null; then
      die "Kafka broker on $ADDR not ready within ${START_TIMEOUT}s: ${out##*$'\n'} (still starting as pid $pid; log: $LOG_FILE)"
    fi
    die "Kafka broker exited during startup (log: $LOG_FILE)"
  fi
  echo "$pid" >"$READY_FILE"
  log "Kafka $KAFKA_VERSION ready on $ADDR (pid $pid, data $DATA_DIR)"
}

cmd_start() {
  local pid
  mkdir -p "$DATA_DIR"
  exec 9>"$DATA_DIR/.lock"
  flock 9
  if pid="$(broker_pid)"; then
    # Already ours; if an earlier start gave up before it was ready, wait again.
    if [[ "$(cat "$READY_FILE" 2>/dev/null || true)" != "$pid" ]]; then
      ensure_jars
      wait_ready "$pid"
    fi
    echo "$ADDR"
    return 0
  fi
  if port_open "$PORT"; then
    die "port $PORT is already in use by another process (not our broker for $DATA_DIR)"
  fi
  if port_open "$CPORT"; then
    die "controller port $CPORT is already in use (set KAFKA_CONTROLLER_PORT or --controller-port)"
  fi
  command -v java >/dev/null || die "java not found (Kafka $KAFKA_VERSION needs Java 17+)"
  ensure_jars
  write_config
  format_storage
  rm -f "$PID_FILE" "$READY_FILE"
  {
    echo
    echo "===== $(date '+%F %T') scripts/kafka.sh start: Kafka $KAFKA_VERSION on $ADDR ====="
  } >>"$LOG_FILE"
  local cds
  cds="$(cds_opts)"
  # Detached (own session, no inherited stdio or lock fd) so callers capturing
  # our output do not wait on the broker; the pid is written by the process.
  # SC2086: the *_OPTS/HEAP strings are word-split on purpose; SC2016: $$ is
  # expanded by the inner bash.
  # shellcheck disable=SC2086,SC2016
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
    java $HEAP -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    $JIT_OPTS -Xshare:auto $cds -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$DATA_DIR/log4j2.properties" \
    -Dkafka.logs.dir="$DATA_DIR" ${KAFKA_OPTS:-} \
    -cp "$CACHE/*" kafka.Kafka "$PROPS" </dev/null >>"$LOG_FILE" 2>&1 9>&- &
  local i
  for ((i = 0; i < 500; i++)); do
    [[ -s "$PID_FILE" ]] && break
    sleep 0.02
  done
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ -n "$pid" ]] || die "could not launch the Kafka broker (log: $LOG_FILE)"
  wait_ready "$pid"
  echo "$ADDR"
}

cmd_stop() {
  local pid i clean_exit=1
  if pid="$(broker_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
      broker_pid >/dev/null || break
      sleep 0.1
    done
    if broker_pid >/dev/null; then
      clean_exit=0
      log "broker pid $pid still running after 30s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        broker_pid >/dev/null || break
        sleep 0.1
      done
    fi
    log "stopped Kafka on $ADDR (pid $pid)"
  else
    log "Kafka on $ADDR is not running"
    clean_exit=0  # died on its own, maybe killed mid-dump: do not trust a dump
  fi
  cds_collect "$clean_exit"
  rm -f "$PID_FILE" "$READY_FILE"
  if ((CLEAN)); then
    rm -rf "$DATA_DIR"
    log "removed $DATA_DIR"
  fi
}

cmd_status() {
  if broker_pid >/dev/null && port_open "$PORT"; then
    echo "$ADDR"
  else
    echo "Kafka on $ADDR is not running" >&2
    return 1
  fi
}

case "$CMD" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  bootstrap) echo "$ADDR" ;;
  pid) broker_pid || { echo "Kafka on $ADDR is not running" >&2; exit 1; } ;;
  -h|--help|help) usage 0 ;;
  *) die "unknown command: $CMD (start|stop|status|bootstrap)" ;;
esac
