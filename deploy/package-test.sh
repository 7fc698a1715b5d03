#!/usr/bin/env bash
# CI test of the Debian packages (scripts/package) on a clean Debian bookworm: a
# container from the local debootstrap base (`nerve-synapse-base/minbase:bookworm`, made
# by `scripts/build-images --bases-only`) running systemd as PID 1. In it:
#
#  1. the packages of a "previous" version (this tree, packaged as <version>~prev-1)
#     are installed with `apt-get install ./nerve_*.deb ./synapse_*.deb`, so their
#     dependencies (haproxy, adduser) resolve from Debian's mirror;
#  2. the shipped default configs pass `--check-config` (run as the packages' users,
#     which proves they can read them);
#  3. the operator edits /etc/nerve/nerve.json (instance_id, a comment), starts an etcd
#     (Debian's etcd-server, its own unit) and an HTTP backend on 127.0.0.1:8080, restarts
#     haproxy.service (now on synapse's haproxy.cfg, by the package's drop-in) and runs
#     `systemctl enable --now nerve synapse`; a request to 127.0.0.1:3212 reaches the
#     backend through HAProxy (routing with the shipped configs, as they are);
#  4. the current packages are installed over them (`apt-get install ./*.deb`): the
#     edited conffile is kept as it was, no prompt, the daemons are restarted by the
#     postinst and route again;
#  5. the files (binaries, units, the haproxy.service drop-in, man pages, completions,
#     examples), the users, owners and modes, and `systemd-analyze verify` of the units
#     are checked; `systemctl reload nerve` keeps the same process; an edit of
#     /etc/synapse/synapse.json reaches haproxy.cfg on `systemctl reload synapse`, in the
#     same process, and requests are still routed; `systemctl stop` stops both cleanly.
#
# Everything the daemons send stays on the container's own loopback; the container
# reaches only Debian's mirror (apt). It is always removed, also on failure.
#
#   deploy/package-test.sh                 # builds the packages first (scripts/package)
#   PACKAGE_TEST_PREFIX=wt25-pkg deploy/package-test.sh   # container name prefix
#   KEEP=1 deploy/package-test.sh          # leave the container for inspection
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

prefix=${PACKAGE_TEST_PREFIX:-package-test}
base=nerve-synapse-base/minbase:bookworm
name="$prefix-$$"
start=$(date +%s)
say() { echo "=== package-test: $* ($(( $(date +%s) - start ))s)"; }
fail() { echo "package-test: FAIL: $*" >&2; exit 1; }

scratch=$(mktemp -d /var/tmp/package-test.XXXXXX)
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ] && docker inspect "$name" >/dev/null 2>&1; then
    echo "--- journal of the failed run (last 80 lines)" >&2
    docker exec "$name" journalctl --no-pager -n 80 >&2 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then
    echo "package-test: KEEP=1: container $name left running" >&2
  else
    docker rm -f "$name" >/dev/null 2>&1 || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "packages (scripts/package), current and previous"
mkdir -p "$scratch/current" "$scratch/prev"
# --fast: cargo-deb's quicker compression; the packages are otherwise the release ones.
mapfile -t current < <(scripts/package --fast --output "$scratch/current")
version=$(dpkg-deb -f "${current[0]}" Version)
prev_version="${version%-*}~prev-1"
scripts/package --fast --deb-version "$prev_version" --output "$scratch/prev" >/dev/null
ls -l "$scratch"/current "$scratch"/prev

say "local Debian base"
scripts/build-images --bases-only --only nerve >/dev/null

say "clean container with systemd as PID 1"
# systemd is installed by the container's first process, which then becomes systemd.
# Not --privileged: CAP_SYS_ADMIN lets systemd set up the units' sandboxes (mount
# namespaces); the host's cgroup hierarchy is mounted read-only as Docker does.
docker run -d --name "$name" --cap-add SYS_ADMIN \
  --tmpfs /run --tmpfs /run/lock --tmpfs /tmp \
  -v /sys/fs/cgroup:/sys/fs/cgroup:ro \
  -v "$scratch:/pkg:ro" \
  -e container=docker --stop-signal SIGRTMIN+3 \
  "$base" bash -c '
    set -e
    # A stock Debian installs man pages; the slim base excludes them.
    rm -f /etc/dpkg/dpkg.cfg.d/slim
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/var/log/package-test-apt.log 2>&1
    apt-get install -y -q systemd systemd-sysv man-db dbus- >>/var/log/package-test-apt.log 2>&1
    exec /usr/lib/systemd/systemd' >/dev/null

ctr() { docker exec "$name" bash -c "$1"; }

# wait_for <seconds> <what> <command in the container>
wait_for() {
  local deadline=$(( $(date +%s) + $1 )) what=$2 cmd=$3
  until ctr "$cmd" >/dev/null 2>&1; do
    if [ "$(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" != true ]; then
      docker logs --tail 40 "$name" >&2 || true
      fail "$what: the container stopped"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      ctr "$cmd" || true
      fail "$what: not within $1 s"
    fi
    sleep 0.5
  done
}

wait_for 600 "systemd installed and booted" \
  '[ "$(cat /proc/1/comm)" = systemd ] &&
   s=$(systemctl is-system-running); [ "$s" = running ] || [ "$s" = degraded ]'
ctr 'systemctl is-system-running' || true

say "apt-get install the previous packages (dependencies from Debian)"
ctr 'cd /pkg/prev && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./*.deb </dev/null' \
  > "$scratch/apt-prev.log" 2>&1 || { tail -40 "$scratch/apt-prev.log" >&2; fail "install"; }
ctr "dpkg-query -W -f '\${Version}\n' nerve synapse" | sort -u | grep -qx "$prev_version" \
  || fail "the previous version is not what is installed"
ctr 'systemctl is-enabled nerve synapse' && fail "the package enabled a unit" || true

say "the shipped default configs pass --check-config (as the packages' users)"
ctr 'runuser -u nerve -- nerve --check-config -c /etc/nerve/nerve.json'
ctr 'runuser -u synapse -- synapse --check-config -c /etc/synapse/synapse.json'
# And an invalid one is refused with exit 64, naming the key.
ctr 'cp /etc/nerve/nerve.json /tmp/bad.json && sed -i "s/\"lease_ttl\"/\"lease_tll\"/" /tmp/bad.json
    set +e; nerve --check-config -c /tmp/bad.json 2>/tmp/bad.err; rc=$?; set -e
    [ "$rc" = 64 ] && grep -q lease_tll /tmp/bad.err' || fail "a bad config is not refused with 64"

say "the operator's setup: edit nerve.json, etcd, a backend, the units"
ctr 'sed -i "s/\"instance_id\": \"change-me\"/\"instance_id\": \"pkgtest-host\"/" /etc/nerve/nerve.json
    printf "%s\n" "// edited by the operator" >> /etc/nerve/nerve.json
    grep -q pkgtest-host /etc/nerve/nerve.json'
ctr 'DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server busybox </dev/null' \
  > "$scratch/apt-etcd.log" 2>&1 || { tail -40 "$scratch/apt-etcd.log" >&2; fail "etcd install"; }
ctr 'mkdir -p /srv/web && echo OK > /srv/web/health && echo "hello from the web backend" > /srv/web/index.html
    printf "[Service]\nExecStart=/bin/busybox httpd -f -p 127.0.0.1:8080 -h /srv/web\n" \
      > /etc/systemd/system/web-backend.service
    systemctl daemon-reload && systemctl start etcd web-backend'
wait_for 60 "etcd answers" 'busybox wget -qO- http://127.0.0.1:2379/health | grep -q true'
ctr 'systemctl restart haproxy && systemctl is-active haproxy'
ctr 'tr "\0" " " < /proc/$(systemctl show -p MainPID --value haproxy)/cmdline |
     grep -q -- "-f /var/lib/synapse/haproxy/haproxy.cfg .*-S /run/haproxy/master.sock"' \
  || fail "haproxy.service does not run the haproxy.cfg of synapse (the drop-in)"
# Type=notify: `systemctl start` returns once each daemon reports ready.
ctr 'timeout 120 systemctl enable --now nerve synapse && systemctl is-active nerve synapse'

route() { # the request a client sends: through HAProxy on the service port
  wait_for 60 "a request through HAProxy reaches the backend ($1)" \
    'busybox wget -qO- http://127.0.0.1:3212/ | grep -qx "hello from the web backend"'
}
route "previous version"
ctr 'nerve status -c /etc/nerve/nerve.json && synapse status -c /etc/synapse/synapse.json'

say "upgrade: apt-get install ./*.deb of the current version"
pids_before=$(ctr 'systemctl show -p MainPID --value nerve synapse | tr "\n" " "')
ctr 'cd /pkg/current && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./*.deb </dev/null' \
  > "$scratch/apt-current.log" 2>&1 || { tail -40 "$scratch/apt-current.log" >&2; fail "upgrade"; }
ctr "dpkg-query -W -f '\${Version}\n' nerve synapse" | sort -u | grep -qx "$version" \
  || fail "the upgrade did not install $version"
ctr 'grep -q "\"instance_id\": \"pkgtest-host\"" /etc/nerve/nerve.json &&
    tail -n 1 /etc/nerve/nerve.json | grep -qx "// edited by the operator"' \
  || fail "the upgrade lost the operator's edit of /etc/nerve/nerve.json"
ctr 'dpkg-deb --fsys-tarfile /pkg/current/synapse_*.deb | tar -xO ./etc/synapse/synapse.json | cmp - /etc/synapse/synapse.json' \
  || fail "the unedited synapse.json is not the shipped one"
pids_after=$(ctr 'systemctl show -p MainPID --value nerve synapse | tr "\n" " "')
[ "$pids_before" != "$pids_after" ] || fail "the upgrade did not restart the running daemons"
ctr 'systemctl is-active nerve synapse haproxy'
route "after the upgrade"

say "files, users, owners and modes"
ctr 'set -e
    for f in /usr/bin/nerve /usr/bin/synapse; do test -x $f; done
    for f in /usr/lib/systemd/system/nerve.service /usr/lib/systemd/system/synapse.service \
             /usr/lib/systemd/system/haproxy.service.d/synapse.conf \
             /usr/share/doc/nerve/README.Debian /usr/share/doc/synapse/README.Debian \
             /usr/share/doc/nerve/copyright /usr/share/doc/synapse/copyright \
             /usr/share/doc/nerve/examples/nerve.json /usr/share/doc/synapse/examples/synapse.json \
             /usr/share/zsh/vendor-completions/_nerve /usr/share/zsh/vendor-completions/_synapse \
             /usr/share/fish/vendor_completions.d/nerve.fish /usr/share/fish/vendor_completions.d/synapse.fish; do
      test -s $f || { echo "missing: $f"; exit 1; }
    done
    for page in nerve nerve-status synapse synapse-status; do
      zcat /usr/share/man/man1/$page.1.gz | grep -q "^\.TH $page 1" || { echo "man page $page"; exit 1; }
    done
    zcat /usr/share/man/man1/nerve.1.gz | grep -q "check.*config"
    for b in nerve synapse; do
      bash -c "source /usr/share/bash-completion/completions/$b && complete -p $b" >/dev/null
    done
    for u in nerve synapse; do
      entry=$(getent passwd $u); uid=$(echo "$entry" | cut -d: -f3)
      [ "$uid" -lt 1000 ] && echo "$entry" | grep -q ":/usr/sbin/nologin$" || { echo "user $entry"; exit 1; }
    done
    check_stat() { [ "$(stat -c "%U:%G %a" "$1")" = "$2" ] || { echo "$1: $(stat -c "%U:%G %a" "$1"), want $2"; exit 1; }; }
    check_stat /etc/nerve "root:nerve 750"
    check_stat /etc/nerve/nerve.json "root:nerve 640"
    check_stat /etc/synapse "root:synapse 750"
    check_stat /etc/synapse/synapse.json "root:synapse 640"
    check_stat /var/lib/synapse/haproxy "synapse:synapse 755"
    # synapse rewrites haproxy.cfg (0640 or 0644 by its writer); HAProxy reads it as root.
    [ "$(stat -c %U:%G /var/lib/synapse/haproxy/haproxy.cfg)" = synapse:synapse ] || {
      echo "haproxy.cfg: $(stat -c %U:%G /var/lib/synapse/haproxy/haproxy.cfg)"; exit 1; }
    for f in /etc/nerve/nerve.json /etc/synapse/synapse.json; do
      grep -qx "$f" /var/lib/dpkg/info/$(basename $(dirname $f)).conffiles || { echo "not a conffile: $f"; exit 1; }
    done' || fail "files, users or modes"

say "systemd-analyze verify"
ctr 'systemd-analyze verify /usr/lib/systemd/system/nerve.service /usr/lib/systemd/system/synapse.service \
      haproxy.service >/tmp/verify.log 2>&1; rc=$?; cat /tmp/verify.log
    [ "$rc" = 0 ] && ! grep -Ei "nerve|synapse" /tmp/verify.log' \
  || fail "systemd-analyze verify"

say "systemctl reload nerve (SIGHUP: same process, still routing)"
pid=$(ctr 'systemctl show -p MainPID --value nerve')
ctr 'systemctl reload nerve && sleep 1 && systemctl is-active nerve'
[ "$(ctr 'systemctl show -p MainPID --value nerve')" = "$pid" ] || fail "reload replaced the process"
route "after systemctl reload nerve"
ctr 'ls /run/nerve >/dev/null && [ "$(stat -c "%U:%G %a" /run/nerve)" = "nerve:nerve 755" ]' \
  || fail "/run/nerve (the unit's RuntimeDirectory)"

say "systemctl reload synapse (SIGHUP: same process, the operator's edit applied, still routing)"
pid=$(ctr 'systemctl show -p MainPID --value synapse')
ctr 'sed -i "s/\"timeout connect 2s\"/\"timeout connect 3s\"/" /etc/synapse/synapse.json &&
    grep -q "timeout connect 3s" /etc/synapse/synapse.json'
ctr 'systemctl reload synapse && systemctl is-active synapse'
wait_for 60 "synapse renders the edited defaults" \
  'grep -q "timeout connect 3s" /var/lib/synapse/haproxy/haproxy.cfg'
[ "$(ctr 'systemctl show -p MainPID --value synapse')" = "$pid" ] || fail "reload replaced synapse's process"
ctr 'busybox wget -qO- http://127.0.0.1:9102/metrics | grep -qx "synapse_config_reloads_total{result=\"ok\"} 1"' \
  || fail "synapse does not count the accepted config reload"
route "after systemctl reload synapse"
say "systemctl stop"
ctr 'timeout 60 systemctl stop nerve synapse'
ctr 'for u in nerve synapse; do r=$(systemctl show -p Result --value $u); [ "$r" = success ] || { echo "$u: $r"; exit 1; }; done' \
  || fail "a daemon did not stop cleanly"

say "passed"
