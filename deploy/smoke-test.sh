#!/usr/bin/env bash
# End-to-end check of the compose stack (docker-compose.yml), with bounded waits; it always
# tears the stack down (volumes included), also on failure or Ctrl-C. CI runs it (.ci/run)
# after scripts/build-images.
#
#   deploy/smoke-test.sh            # the images must exist (scripts/build-images)
#   deploy/smoke-test.sh --build    # run scripts/build-images first (extra arguments after
#                                   # --build go to it, e.g. --build --stock)
#
# What it checks, as a user of the stack would see it: every assertion is on the answers
# to real HTTP requests sent from one host's container to its local HAProxy (each demo
# instance answers with its name, host and port), on what is in etcd, or on exit codes;
# never on log lines.
#   1. `up -d` brings up 3 etcd members and the two hosts; from host-a, 127.0.0.1:30002
#      (its local HAProxy) reaches beta on host-b (the cold start is timed), and from
#      host-b, :30001 reaches alpha on host-a;
#   2. beta's two instances (host-b:8080 in demo-b, host-b:8081 in demo-b2) are both in
#      host-a's rotation, and nerve's three registrations are in etcd;
#   3. `stop nerve-b`: nerve exits on SIGTERM (status 0, not killed) having removed beta's
#      keys, and host-a's HAProxy stops routing to beta; `start nerve-b` brings both back;
#   4. `stop demo-b2` (one service container) while host-a sends a request every 50 ms:
#      traffic moves to the remaining instance (40 answers in a row from host-b:8080),
#      its registration leaves etcd; failed requests during the switch are counted;
#   5. `stop` one etcd member (the leader, or SMOKE_ETCD_STOP=etcd1|etcd2|etcd3): the other
#      two stay healthy and routing keeps working; registration keeps working too:
#      `restart nerve-a` registers alpha under a new lease and host-b routes to it again;
#      with synapse-a stopped, `start demo-b2` registers it again and host-b (synapse-b's
#      watch) routes to it; `start synapse-a` (a fresh list through the remaining members)
#      routes host-a to both beta instances again;
#   6. `start` the member: all three healthy, it has caught up with the writes made while it
#      was down, and routing still works both ways;
#   7. `down -v` leaves no container, network or volume of the project behind.
# It prints the image sizes and the times it measured (docs/deployment.md records them).
set -euo pipefail
cd "$(dirname "$0")/.."

project=${SMOKE_PROJECT:-nerve-synapse-smoke}
tag=${TAG:-dev}
etcd_stop=${SMOKE_ETCD_STOP:-leader}
case "$etcd_stop" in
  leader|etcd1|etcd2|etcd3) ;;
  *) echo "smoke-test: SMOKE_ETCD_STOP must be leader, etcd1, etcd2 or etcd3" >&2; exit 64 ;;
esac
if [ "${1:-}" = --build ]; then
  shift
  scripts/build-images --tag "$tag" "$@"
fi

if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  echo "smoke-test: FAIL: neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 1
fi
# SMOKE_TLS=1: the same checks on the TLS option (deploy/compose/tls.yml: etcd on https://
# with client-certificate auth), plus a check that etcd refuses clients without a
# certificate of the stack's CA.
compose_files=(-f docker-compose.yml)
scheme=http
if [ "${SMOKE_TLS:-0}" = 1 ]; then
  compose_files+=(-f deploy/compose/tls.yml)
  scheme=https
  scripts/compose-tls-certs
fi
# SMOKE_COMPOSE_FILES: more compose files (space-separated) laid over those, e.g.
# deploy/compose/grpc-proxy.yml: the same checks, with the synapses behind the proxy.
for extra in ${SMOKE_COMPOSE_FILES:-}; do compose_files+=(-f "$extra"); done
compose() { "${compose_cmd[@]}" -p "$project" "${compose_files[@]}" "$@"; }

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
t0=$(now_ms)
log() { printf '[smoke %6.1fs] %s\n' "$(( $(now_ms) - t0 ))e-3" "$*"; }
fail() { log "FAIL: $*"; exit 1; }

# Background request pollers (docker exec clients started here), stopped on exit.
pollers=()
tmpdir=$(mktemp -d)
stack_started=0

teardown() {
  local status=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${pollers[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "$stack_started" = 1 ]; then
    if [ "$status" -ne 0 ]; then
      log "logs of the failed run (last 30 lines per service):"
      compose logs --no-color --tail=30 2>&1 | sed 's/^/    /' || true
    fi
    log "tearing down: down -v"
    local down_start
    down_start=$(now_ms)
    if ! timeout 120 "${compose_cmd[@]}" -p "$project" "${compose_files[@]}" down -v \
        --remove-orphans --timeout 20 >"$tmpdir/down.log" 2>&1; then
      log "down failed:"; sed 's/^/    /' "$tmpdir/down.log"
      status=1
    fi
    local left
    left=$( { docker ps -aq --filter "label=com.docker.compose.project=$project"
              docker network ls -q --filter "label=com.docker.compose.project=$project"
              docker volume ls -q --filter "label=com.docker.compose.project=$project"; } | wc -l)
    if [ "$left" -ne 0 ]; then
      log "FAIL: $left containers/networks/volumes of $project are left"
      status=1
    else
      log "down -v took $(( $(now_ms) - down_start )) ms; no container, network or volume of $project is left"
    fi
  fi
  rm -rf "$tmpdir"
  if [ "$status" -eq 0 ]; then log "PASS"; else log "FAILED (exit $status)"; fi
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# wait_for SECONDS WHAT CMD...: runs CMD every 0.2 s until it succeeds, or fails the test.
wait_for() {
  local limit=$1 what=$2; shift 2
  local deadline=$(( $(now_ms) + limit * 1000 ))
  until "$@" >/dev/null 2>&1; do
    (( $(now_ms) < deadline )) || fail "$what: not within ${limit}s"
    sleep 0.2
  done
}

# --- preflight: a daemon, the images, no other stack on the compose subnet ---

docker info >/dev/null 2>&1 ||
  fail "the Docker daemon is not reachable (docker info failed); this test needs Docker"
for image in etcd demo nerve synapse; do
  docker image inspect "nerve-synapse/$image:$tag" >/dev/null 2>&1 ||
    fail "image nerve-synapse/$image:$tag is missing: run scripts/build-images (or pass --build)"
done
docker run --rm --network none --entrypoint etcdctl "nerve-synapse/etcd:$tag" version >/dev/null 2>&1 ||
  fail "nerve-synapse/etcd:$tag has no etcdctl: rebuild it with scripts/build-images"
log "images:"
docker image ls --format '    {{.Repository}}:{{.Tag}}  {{.Size}}' | grep "nerve-synapse/.*:$tag " | sort
log "using ${compose_cmd[*]}; project $project"
stack_started=1
compose down -v --remove-orphans >/dev/null 2>&1 || true
subnet=10.213.57.0/24
other=$(docker network ls -q | xargs -r docker network inspect \
  -f '{{.Name}} {{range .IPAM.Config}}{{.Subnet}} {{end}}' | grep " $subnet " || true)
[ -z "$other" ] || fail "another network already uses $subnet (${other%% *}): stop that stack first"

# --- helpers ---

cid() {
  local id
  id=$(docker ps -aq --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1")
  [ -n "$id" ] || { echo "no container for service $1" >&2; return 1; }
  echo "$id"
}

# get FROM PORT: one request from host FROM's demo container (demo-a or demo-b) to its
# local HAProxy; prints the answer's first line ("beta on host-b:8080"), fails on an error.
get() {
  timeout 20 docker exec "$(cid "demo-$1")" busybox wget -q -O - "http://127.0.0.1:$2/" 2>/dev/null |
    sed 's/ (container .*//'
  return "${PIPESTATUS[0]}"
}

# sample FROM PORT N: N requests in a row, one line each: the answer, or FAIL.
sample() {
  # shellcheck disable=SC2016 # the script is expanded by the container's sh
  timeout 60 docker exec "$(cid "demo-$1")" sh -c '
    i=0
    while [ "$i" -lt "$2" ]; do
      busybox wget -q -O - "http://127.0.0.1:$1/" 2>/dev/null || echo FAIL
      i=$((i + 1))
    done' sample "$2" "$3" | sed 's/ (container .*//'
}

# answers_are FROM PORT N ANSWER...: N requests all succeed, every answer is one of
# ANSWER..., and each ANSWER is seen at least once.
answers_are() {
  local from=$1 port=$2 n=$3; shift 3
  local got want
  got=$(sample "$from" "$port" "$n") || return 1
  [ "$(grep -c . <<<"$got")" = "$n" ] || return 1
  for want in "$@"; do grep -qxF "$want" <<<"$got" || return 1; done
  grep -vxF "$(printf '%s\n' "$@")" <<<"$got" | grep -q . && return 1
  return 0
}

B1="beta on host-b:8080"
B2="beta on host-b:8081"
ALPHA="alpha on host-a:8080"

# etcd: etcdctl inside a running member's container, against the members that are up.
members_up=(etcd1 etcd2 etcd3)
endpoints() { local m out=""; for m in "${members_up[@]}"; do out+="${out:+,}$scheme://$m:2379"; done; echo "$out"; }
etcdctl_() { timeout 20 docker exec "$(cid "${members_up[0]}")" etcdctl --endpoints="$(endpoints)" "$@"; }
keys() { etcdctl_ get --prefix --keys-only "$1" | grep . || true; }
key_count_is() { [ "$(keys "$1" | grep -c .)" = "$2" ]; }
# every member in members_up answers the health check (a proposal committed through it)
members_healthy() {
  local out
  out=$(etcdctl_ endpoint health -w json 2>/dev/null) || return 1
  [ "$(grep -o '"health":true' <<<"$out" | wc -l)" = "${#members_up[@]}" ]
}
docker_healthy() {
  local s; s=$(docker inspect -f '{{.State.Health.Status}}' "$(cid "$1")") && [ "$s" = healthy ]
}

# poll FROM PORT MODE WANT NEED LIMIT OUT: in the background, a request from host FROM
# every 50 ms, one line per request to OUT: "<ms> <answer or FAIL>". MODE "until-fail":
# stops at the first failed request; MODE "until-only": stops once NEED answers in a row
# are WANT. Ends with "done <ms>", or "timeout" after LIMIT seconds.
poll() {
  local from=$1 port=$2 mode=$3 want=$4 need=$5 limit=$6 out=$7
  # shellcheck disable=SC2016 # the script is expanded by the container's sh
  timeout $(( limit + 20 )) docker exec "$(cid "demo-$from")" sh -c '
    port=$1 mode=$2 want=$3 need=$4 limit=$5
    echo ready
    end=$(( $(date +%s) + limit ))
    streak=0
    while [ "$(date +%s)" -lt "$end" ]; do
      t=$(( $(date +%s%N) / 1000000 ))
      a=$(busybox wget -q -O - "http://127.0.0.1:$port/" 2>/dev/null) || a=FAIL
      a=${a%% (container*}
      echo "$t $a"
      if [ "$a" = "$want" ]; then streak=$((streak + 1)); else streak=0; fi
      if [ "$mode" = until-fail ] && [ "$a" = FAIL ]; then echo "done $t"; exit 0; fi
      if [ "$mode" = until-only ] && [ "$streak" -ge "$need" ]; then echo "done $t"; exit 0; fi
      sleep 0.05
    done
    echo timeout' poll "$port" "$mode" "$want" "$need" "$limit" >"$out" 2>&1 &
  pollers+=($!)
}

# --- 1. up, cold start ---

up_start=$(now_ms)
compose up -d --no-build >"$tmpdir/up.log" 2>&1 || { cat "$tmpdir/up.log"; fail "up -d failed"; }
up_done=$(now_ms)
log "up -d returned after $(( up_done - up_start )) ms"

etcd_all_docker_healthy() { docker_healthy etcd1 && docker_healthy etcd2 && docker_healthy etcd3; }
wait_for 90 "etcd members healthy" etcd_all_docker_healthy
wait_for 30 "etcd: three members answer the health check" members_healthy
log "etcd: 3 members healthy after $(( $(now_ms) - up_start )) ms"

# routes FROM PORT ANSWER...: one request is answered with one of ANSWER...
routes() { local a; a=$(get "$1" "$2") && grep -qxF "$(printf '%s\n' "${@:3}")" <<<"$a"; }
wait_for 90 "host-a -> 127.0.0.1:30002 -> beta on host-b" routes a 30002 "$B1" "$B2"
first_ab=$(( $(now_ms) - up_start ))
log "host-a -> :30002 -> $(get a 30002)  (cold start: first routed request $first_ab ms after up began)"
wait_for 30 "host-b -> 127.0.0.1:30001 -> alpha on host-a" routes b 30001 "$ALPHA"
first_ba=$(( $(now_ms) - up_start ))
log "host-b -> :30001 -> $(get b 30001)  ($first_ba ms after up began)"

# With deploy/compose/grpc-proxy.yml: each host's synapse watches through the proxy (an
# established connection from the host to port 23790; 5CEE in /proc/net/tcp's hex), so
# the routing above went through it.
# (No `| grep -q` here: with pipefail, the writer's SIGPIPE would make a match look false.)
services=$(compose config --services 2>/dev/null || true)
if grep -qx etcd-proxy <<<"$services"; then
  for h in a b; do
    docker exec "$(cid "demo-$h")" cat /proc/net/tcp /proc/net/tcp6 |
      awk '$3 ~ /:5CEE$/ && $4 == "01" { found = 1 } END { exit !found }' ||
      fail "host-$h has no connection to the etcd gRPC proxy (etcd-proxy:23790)"
  done
  log "both hosts' synapses watch through the etcd gRPC proxy (etcd-proxy:23790)"
fi
answers_are a 30001 4 "$ALPHA" || fail "host-a -> :30001 does not reach alpha on host-a"

# --- 2. both beta instances in rotation; registrations ---

wait_for 30 "both beta instances in host-a's rotation" answers_are a 30002 10 "$B1" "$B2"
both_at=$(( $(now_ms) - up_start ))
log "host-a -> :30002: 10 requests answered by both instances, $B1 and $B2 ($both_at ms after up began)"
sample a 30002 6 | sort | uniq -c | sed 's/^/    /'

log "registrations in etcd:"
regs=$(etcdctl_ get --prefix /nerve/services/)
# shellcheck disable=SC2001 # indents every line
sed 's/^/    /' <<<"$regs"
grep -qF '{"host":"10.213.57.22","port":8080,"name":"host-b"}' <<<"$regs" || fail "no registration of beta on :8080"
grep -qF '{"host":"10.213.57.22","port":8081,"name":"host-b"}' <<<"$regs" || fail "no registration of beta on :8081"
grep -qF '{"host":"10.213.57.21","port":8080,"name":"host-a"}' <<<"$regs" || fail "no registration of alpha"
if [ "$scheme" = https ]; then
  # The registrations above went over TLS with client certificates; without a certificate,
  # or over plain HTTP, etcd answers nothing.
  anon() { timeout 20 docker exec -e ETCDCTL_CERT= -e ETCDCTL_KEY= "$(cid etcd1)" etcdctl \
    --endpoints="$1" --dial-timeout=3s --command-timeout=5s get --prefix --keys-only /nerve/ 2>&1; }
  if out=$(anon https://etcd1:2379); then fail "etcd answered a client without a certificate: $out"; fi
  if out=$(anon http://etcd1:2379); then fail "etcd answered plain HTTP: $out"; fi
  log "TLS: etcd refuses a client without a certificate and plain HTTP"
fi

# --- 3. stop nerve-b: SIGTERM deregisters; start brings beta back ---

poll a 30002 until-fail "" 0 30 "$tmpdir/poll-nerve"
wait_for 20 "the poller in host-a to start" grep -q ready "$tmpdir/poll-nerve"
sleep 0.3
grep -q FAIL "$tmpdir/poll-nerve" && fail "beta failed before nerve-b was stopped: $(cat "$tmpdir/poll-nerve")"
stop_start=$(now_ms)
compose stop nerve-b >/dev/null 2>&1
stop_done=$(now_ms)
wait "${pollers[-1]}" || true
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$(cid nerve-b)")
log "stop nerve-b took $(( stop_done - stop_start )) ms; nerve exited with status $exit_code"
[ "$exit_code" = 0 ] || fail "nerve-b exited with $exit_code on SIGTERM (137 = killed after the grace period)"
gone=$(awk '/^done/ { print $2 }' "$tmpdir/poll-nerve")
[ -n "$gone" ] || fail "host-a's HAProxy still routes to beta 30 s after nerve-b stopped ($(tail -3 "$tmpdir/poll-nerve"))"
# nerve deletes its keys before it exits, so its exit time bounds the deregistration.
exited=$(( $(date -d "$(docker inspect -f '{{.State.FinishedAt}}' "$(cid nerve-b)")" +%s%N) / 1000000 ))
removal_after_exit=$(( gone - exited ))
log "host-a stopped routing to beta $(( gone - stop_start )) ms after 'stop nerve-b' was issued," \
  "$removal_after_exit ms after nerve-b exited (poll interval 50 ms)"
key_count_is /nerve/services/beta/ 0 || fail "beta's keys are still in etcd after nerve-b stopped: $(keys /nerve/services/beta/)"
answers_are a 30002 3 FAIL || fail "host-a -> :30002 still answers after nerve-b stopped"
log "beta's keys are gone from etcd; host-a -> :30002 fails (503)"

start_start=$(now_ms)
compose start nerve-b >/dev/null 2>&1
wait_for 30 "both beta instances back on host-a after start nerve-b" answers_are a 30002 6 "$B1" "$B2"
nerve_back=$(( $(now_ms) - start_start ))
log "both beta instances routed from host-a again $nerve_back ms after 'start nerve-b'"

# --- 4. stop one service container: traffic moves to the remaining instance ---

poll a 30002 until-only "$B1" 40 40 "$tmpdir/poll-switch"
wait_for 20 "the poller in host-a to start" grep -q ready "$tmpdir/poll-switch"
wait_for 10 "the poller to see both instances" \
  sh -c "grep -qF '$B1' '$tmpdir/poll-switch' && grep -qF '$B2' '$tmpdir/poll-switch'"
grep -q FAIL "$tmpdir/poll-switch" && fail "requests failed before demo-b2 was stopped"
switch_start=$(now_ms)
compose stop demo-b2 >/dev/null 2>&1
switch_stopped=$(now_ms)
wait "${pollers[-1]}" || true
grep -q '^done' "$tmpdir/poll-switch" ||
  fail "host-a's traffic did not move to $B1 alone within 40 s: $(tail -5 "$tmpdir/poll-switch")"
after=$(awk -v t="$switch_start" '$1 ~ /^[0-9]+$/ && $1 >= t' "$tmpdir/poll-switch")
n_after=$(grep -c . <<<"$after" || true)
n_failed=$(grep -c ' FAIL$' <<<"$after" || true)
last_b2=$( { grep -F "$B2" <<<"$after" || true; } | tail -1 | cut -d' ' -f1)
n_total=$(grep -cE '^[0-9]+ ' "$tmpdir/poll-switch" || true)
b2_exited=$(( $(date -d "$(docker inspect -f '{{.State.FinishedAt}}' "$(cid demo-b2)")" +%s%N) / 1000000 ))
log "stop demo-b2 took $(( switch_stopped - switch_start )) ms (demo-b2 exited" \
  "$(( b2_exited - switch_start )) ms after it was issued); meanwhile host-a sent $n_after requests:" \
  "$n_failed failed; the last answer from $B2 came" \
  "$(if [ -z "$last_b2" ]; then echo "before the stop was issued"
      elif (( last_b2 <= b2_exited )); then echo "$(( b2_exited - last_b2 )) ms before demo-b2 exited"
      else echo "$(( last_b2 - b2_exited )) ms after demo-b2 exited"; fi)," \
  "then 40 in a row from $B1 ($n_total requests in all)"
# HAProxy retries a refused connection on the other server (retries 2, option redispatch),
# so no request should fail; one in flight at the very moment the server dies may.
[ "$n_failed" -le 2 ] || fail "$n_failed requests failed while traffic moved to $B1"
wait_for 15 "demo-b2's registration to leave etcd" key_count_is /nerve/services/beta/ 1
log "demo-b2's registration left etcd (nerve-b's check: fall 2 at 1 s), at most" \
  "$(( $(now_ms) - b2_exited )) ms after demo-b2 exited"
answers_are a 30002 10 "$B1" || fail "host-a -> :30002 is not answered by $B1 alone"
log "only $B1 is registered and answers host-a"

# --- 5. stop one etcd member: routing and registration keep working ---

leader=""
if [ "$etcd_stop" = leader ]; then
  has_leader() { etcdctl_ endpoint status | grep -q ', true, '; }
  wait_for 15 "etcd to report a leader" has_leader
  leader=$(etcdctl_ endpoint status | awk -F', ' '$5 == "true" { sub(/^https?:\/\//, "", $1); sub(":2379", "", $1); print $1 }')
  victim=$leader
else
  victim=$etcd_stop
fi
[ -n "$victim" ] || fail "could not tell which etcd member to stop"
members_up=()
for m in etcd1 etcd2 etcd3; do [ "$m" = "$victim" ] || members_up+=("$m"); done
log "stopping etcd member $victim${leader:+ (the leader)}"
etcd_stop_start=$(now_ms)
compose stop "$victim" >/dev/null 2>&1
[ "$(docker inspect -f '{{.State.Running}}' "$(cid "$victim")")" = false ] || fail "$victim is still running"
log "stop $victim took $(( $(now_ms) - etcd_stop_start )) ms"
wait_for 30 "the two remaining members healthy (quorum) without $victim" members_healthy
log "etcd: ${members_up[*]} healthy without $victim $(( $(now_ms) - etcd_stop_start )) ms after the stop"
answers_are a 30002 10 "$B1" || fail "host-a -> beta broke with $victim down"
answers_are b 30001 10 "$ALPHA" || fail "host-b -> alpha broke with $victim down"
log "routing with $victim down: host-a -> :30002 -> $B1, host-b -> :30001 -> $ALPHA (10/10 each)"

# A nerve that restarts grants a new lease and registers again (a new key).
alpha_key=$(keys /nerve/services/alpha/)
t=$(now_ms)
compose restart nerve-a >/dev/null 2>&1
new_alpha_key() { local k; k=$(keys /nerve/services/alpha/); [ -n "$k" ] && [ "$k" != "$alpha_key" ]; }
wait_for 30 "alpha registered again under a new lease with $victim down" new_alpha_key
wait_for 30 "alpha routed from host-b after restart nerve-a with $victim down" answers_are b 30001 4 "$ALPHA"
alpha_back=$(( $(now_ms) - t ))
key_count_is /nerve/services/alpha/ 1 || fail "alpha has not 1 key in etcd: $(keys /nerve/services/alpha/)"
log "restart nerve-a -> alpha registered under a new lease and routed from host-b after $alpha_back ms" \
  "($victim down)"

# A service instance that comes back is registered; synapse-b, running throughout, sees it
# through its watch, and synapse-a, stopped meanwhile (its HAProxy config still has only
# host-b:8080), lists it through the remaining members when it starts.
compose stop synapse-a >/dev/null 2>&1
t=$(now_ms)
compose start demo-b2 >/dev/null 2>&1
wait_for 30 "demo-b2 registered again with $victim down" key_count_is /nerve/services/beta/ 2
wait_for 30 "demo-b2 back in host-b's rotation with $victim down" answers_are b 30002 6 "$B1" "$B2"
b2_back=$(( $(now_ms) - t ))
log "start demo-b2 -> registered, and routed from host-b (watch) after $b2_back ms ($victim down)"
t=$(now_ms)
compose start synapse-a >/dev/null 2>&1
wait_for 30 "host-a routing to both beta instances after start synapse-a with $victim down" \
  answers_are a 30002 6 "$B1" "$B2"
synapse_back=$(( $(now_ms) - t ))
log "start synapse-a -> host-a routes to both beta instances after $synapse_back ms ($victim down)"

# --- 6. start the member again: healthy, caught up, routing unchanged ---

t=$(now_ms)
compose start "$victim" >/dev/null 2>&1
members_up=(etcd1 etcd2 etcd3)
wait_for 60 "$victim healthy again" docker_healthy "$victim"
wait_for 30 "all three members answer the health check" members_healthy
member_back=$(( $(now_ms) - t ))
log "start $victim -> all three members healthy after $member_back ms"
etcdctl_ endpoint health -w table 2>&1 | sed 's/^/    /'
# The restarted member alone (serializable read: its own copy) has the writes made while it
# was down: beta's second instance and alpha's key under nerve-a's new lease.
caught_up() {
  local own all
  own=$(timeout 20 docker exec "$(cid "$victim")" etcdctl --endpoints="$scheme://$victim:2379" \
    get --prefix --keys-only --consistency=s /nerve/services/ | grep . | sort)
  all=$(keys /nerve/services/ | sort)
  [ -n "$own" ] && [ "$own" = "$all" ] && [ "$(grep -c . <<<"$all")" = 3 ]
}
wait_for 30 "$victim to have caught up with the registrations" caught_up
log "$victim's own copy has the 3 registrations, including those written while it was down"
answers_are a 30002 10 "$B1" "$B2" || fail "host-a -> beta after $victim came back"
answers_are b 30001 6 "$ALPHA" || fail "host-b -> alpha after $victim came back"
answers_are b 30002 6 "$B1" "$B2" || fail "host-b -> beta after $victim came back"
log "routing with all members up: host-a -> both beta instances, host-b -> alpha and both beta instances"

log "summary: cold start (up -> first request host-a -> beta) ${first_ab} ms, host-b -> alpha ${first_ba} ms;" \
  "stop nerve-b -> beta unrouted $(( gone - stop_start )) ms; start nerve-b -> routed $nerve_back ms;" \
  "stop demo-b2 -> $n_failed/$n_after requests failed during the switch;" \
  "etcd $victim down: nerve-a restart -> routed $alpha_back ms, demo-b2 back $b2_back ms, synapse-a start -> routed $synapse_back ms;" \
  "start $victim -> healthy $member_back ms"
