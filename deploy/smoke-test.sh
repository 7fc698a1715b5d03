#!/usr/bin/env bash
# End-to-end check of the compose stack (docker-compose.yml), with bounded waits; it always
# tears the stack down (volumes included), also on failure or Ctrl-C.
#
#   deploy/smoke-test.sh            # the images must exist (scripts/build-images)
#   deploy/smoke-test.sh --build    # run scripts/build-images first (extra arguments after
#                                   # --build go to it, e.g. --build --stock)
#
# What it checks, as a user of the stack would see it:
#   1. `up -d` brings up 3 etcd members and the two hosts;
#   2. from host-a, 127.0.0.1:30002 (its local HAProxy) reaches beta on host-b, and from
#      host-b, :30001 reaches alpha on host-a; nerve's registrations are in etcd;
#   3. `stop nerve-b`: nerve exits on SIGTERM (status 0, not killed) having removed beta's
#      key, and host-a's HAProxy stops routing to beta within seconds;
#   4. `start nerve-b`: beta comes back on host-a;
#   5. `down -v` leaves no container, network or volume of the project behind.
# It prints the image sizes and the times it measured. Not part of CI (needs Docker and
# takes about a minute); see docs/deployment.md.
set -euo pipefail
cd "$(dirname "$0")/.."

project=${SMOKE_PROJECT:-nerve-synapse-smoke}
if [ "${1:-}" = --build ]; then
  shift
  scripts/build-images "$@"
fi

if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
else
  compose_cmd=(docker-compose)
fi
compose() { "${compose_cmd[@]}" -p "$project" -f docker-compose.yml "$@"; }

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
t0=$(now_ms)
log() { printf '[smoke %6.1fs] %s\n' "$(( $(now_ms) - t0 ))e-3" "$*"; }
fail() { log "FAIL: $*"; exit 1; }

teardown() {
  local status=$?
  trap - EXIT INT TERM
  if [ "$status" -ne 0 ]; then
    log "logs of the failed run (last 30 lines per service):"
    compose logs --no-color --tail=30 2>&1 | sed 's/^/    /' || true
  fi
  log "tearing down: down -v"
  timeout 120 "${compose_cmd[@]}" -p "$project" -f docker-compose.yml down -v --remove-orphans \
    --timeout 20 >/dev/null 2>&1 || log "down failed (exit $?)"
  local left
  left=$( { docker ps -aq --filter "label=com.docker.compose.project=$project"
            docker network ls -q --filter "label=com.docker.compose.project=$project"
            docker volume ls -q --filter "label=com.docker.compose.project=$project"; } | wc -l)
  if [ "$left" -ne 0 ]; then
    log "FAIL: $left containers/networks/volumes of $project are left"
    status=1
  else
    log "down: no container, network or volume of $project is left"
  fi
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

# get FROM PORT: a request from host FROM's demo container to its local HAProxy.
get() { compose exec -T "demo-$1" busybox wget -q -O - "http://127.0.0.1:$2/" 2>/dev/null; }
routes() { get "$1" "$2" | grep -q "$3"; }

# etcd_get PREFIX/: the values under PREFIX/, read through etcd's v3 JSON gateway from a
# container on the compose network (no etcdctl in the images).
etcd_get() {
  local key end
  key=$(printf '%s' "$1" | base64 -w0)
  end=$(printf '%s' "${1%/}0" | base64 -w0) # the range end of a prefix ending in '/'
  compose exec -T demo-a busybox wget -q -O - \
    --post-data "{\"key\":\"$key\",\"range_end\":\"$end\"}" http://etcd1:2379/v3/kv/range |
    grep -o '"value":"[^"]*"' | cut -d'"' -f4 | while read -r v; do
      printf '%s' "$v" | base64 -d; echo
    done
}

for image in etcd demo nerve synapse; do
  docker image inspect "nerve-synapse/$image:${TAG:-dev}" >/dev/null 2>&1 ||
    fail "image nerve-synapse/$image:${TAG:-dev} is missing: run scripts/build-images (or pass --build)"
done
log "images:"
docker image ls --format '    {{.Repository}}:{{.Tag}}  {{.Size}}' | grep "nerve-synapse/.*:${TAG:-dev} " | sort

log "using ${compose_cmd[*]}; project $project"
compose down -v --remove-orphans >/dev/null 2>&1 || true

up_start=$(now_ms)
compose up -d --no-build >/dev/null 2>&1 || { compose up -d --no-build; fail "up -d failed"; }
up_done=$(now_ms)
log "up -d returned after $(( up_done - up_start )) ms"

container() {
  docker ps -aq --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1"
}
etcd_healthy() {
  local states
  states=$(docker inspect -f '{{.State.Health.Status}}' "$(container etcd1)" "$(container etcd2)" \
    "$(container etcd3)" | sort -u)
  [ "$states" = healthy ]
}
wait_for 90 "etcd cluster healthy" etcd_healthy
log "etcd: 3 members healthy after $(( $(now_ms) - up_start )) ms"

wait_for 90 "host-a -> 127.0.0.1:30002 -> beta on host-b" routes a 30002 "beta on host-b"
first_ab=$(( $(now_ms) - up_start ))
log "host-a -> :30002 -> $(get a 30002)  (first routed request $first_ab ms after up)"
wait_for 30 "host-b -> 127.0.0.1:30001 -> alpha on host-a" routes b 30001 "alpha on host-a"
first_ba=$(( $(now_ms) - up_start ))
log "host-b -> :30001 -> $(get b 30001)  (first routed request $first_ba ms after up)"
routes a 30001 "alpha on host-a" || fail "host-a -> :30001 does not reach alpha on host-a"

log "registrations in etcd:"
regs=$(etcd_get /nerve/services/)
sed 's/^/    /' <<<"$regs"
grep -q '"host":"10.213.57.22"' <<<"$regs" || fail "no registration of beta (10.213.57.22) in etcd"

# A poller inside host-a watches beta through host-a's HAProxy every 50 ms and prints the
# time of the first request that does not reach beta on host-b.
poll_out=$(mktemp)
compose exec -T demo-a sh -c '
  echo ready
  end=$(( $(date +%s) + 30 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    if ! busybox wget -q -O - http://127.0.0.1:30002/ 2>/dev/null | grep -q "beta on host-b"; then
      echo "gone $(( $(date +%s%N) / 1000000 ))"; exit 0
    fi
    sleep 0.05
  done
  echo timeout' >"$poll_out" 2>&1 &
poller=$!
wait_for 20 "the poller in host-a to start" grep -q ready "$poll_out"
grep -q gone "$poll_out" && fail "beta stopped answering before nerve-b was stopped"

stop_start=$(now_ms)
compose stop nerve-b >/dev/null 2>&1
stop_done=$(now_ms)
wait "$poller" || true
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$(container nerve-b)")
log "stop nerve-b took $(( stop_done - stop_start )) ms; nerve exited with status $exit_code"
[ "$exit_code" = 0 ] || fail "nerve-b exited with $exit_code on SIGTERM (137 = killed after the grace period)"
gone=$(awk '/^gone/ { print $2 }' "$poll_out")
[ -n "$gone" ] || fail "host-a's HAProxy still routes to beta 30 s after nerve-b stopped ($(cat "$poll_out"))"
# nerve deletes its keys before it exits, so its exit time bounds the deregistration.
exited=$(( $(date -d "$(docker inspect -f '{{.State.FinishedAt}}' "$(container nerve-b)")" +%s%N) / 1000000 ))
removal_after_exit=$(( gone - exited ))
log "host-a stopped routing to beta $(( gone - stop_start )) ms after 'stop nerve-b' was issued," \
  "$removal_after_exit ms after nerve-b exited (poll interval 50 ms)"
rm -f "$poll_out"
etcd_get /nerve/services/beta/ | grep -q . && fail "beta's key is still in etcd after nerve-b stopped"
log "beta's key is gone from etcd; host-a -> :30002 now answers: $(compose exec -T demo-a \
  busybox wget -q -O - http://127.0.0.1:30002/ 2>&1 | head -1)"

start_start=$(now_ms)
compose start nerve-b >/dev/null 2>&1
wait_for 30 "beta back on host-a after start nerve-b" routes a 30002 "beta on host-b"
log "beta routed from host-a again $(( $(now_ms) - start_start )) ms after 'start nerve-b'"

log "summary: first routed request A->B ${first_ab} ms, B->A ${first_ba} ms after up;" \
  "removal $(( gone - stop_start )) ms after stop was issued, $removal_after_exit ms after nerve exited"
