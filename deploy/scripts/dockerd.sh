#!/usr/bin/env bash
# Start or stop a private Docker engine whose state lives in one directory (no systemd needed).
#   dockerd.sh start DIR   -> prints the DOCKER_HOST to use (unix://DIR/sock); waits until it answers
#   dockerd.sh stop DIR    -> stops that engine by its PID file
# Flags follow this machine's rules: no bridge, no iptables; containers use --network host.
set -euo pipefail
cmd="${1:?start|stop}"; dir="${2:?state dir}"
case "$cmd" in
  start)
    mkdir -p "$dir/data" "$dir/exec"
    if [ -S "$dir/sock" ] && DOCKER_HOST="unix://$dir/sock" docker version >/dev/null 2>&1; then
      echo "unix://$dir/sock"; exit 0
    fi
    rm -f "$dir/sock" "$dir/pid"
    # niced: image builds run inside the engine, so this is what keeps them gentle on shared cores
    setsid nice -n "${DOCKERD_NICE:-10}" dockerd --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/pid" \
      -H "unix://$dir/sock" --bridge=none --iptables=false --ip6tables=false \
      >"$dir/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 60); do
      if DOCKER_HOST="unix://$dir/sock" docker version >/dev/null 2>&1; then
        echo "unix://$dir/sock"; exit 0
      fi
      sleep 0.5
    done
    echo "dockerd did not answer within 30 s; log:" >&2; tail -20 "$dir/dockerd.log" >&2; exit 1
    ;;
  stop)
    if [ -s "$dir/pid" ]; then
      pid="$(cat "$dir/pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    # dockerd leaves mounts behind (exec/netns/default, sometimes overlays); unmount them, deepest
    # first, so the state dir can be deleted.
    real="$(realpath "$dir")"
    awk -v d="$real/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
