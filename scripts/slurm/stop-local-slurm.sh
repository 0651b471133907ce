#!/usr/bin/env bash
# Stop what start-local-slurm.sh started, by pid file only. --keep-munge leaves munged up.
# Origin: the project's own shared helper pair, as scripts/slurm/start-local-slurm.sh says.
BASE=${SLURM_BASE:-/tmp/slurmtest}
export SLURM_CONF=$BASE/etc/slurm.conf PATH=/usr/sbin:/usr/bin:$PATH
running() {                        # alive and not a zombie awaiting its reaper
  kill -0 "$1" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}
stop_pids() {                      # $@ = pid files; TERM all, wait up to 10 s, then KILL
  local f p pids=()
  for f in "$@"; do [ -s "$f" ] && pids+=("$(cat "$f")"); done
  for p in "${pids[@]}"; do running "$p" && kill "$p"; done
  for _ in $(seq 100); do
    local left=0; for p in "${pids[@]}"; do running "$p" && left=1; done
    [ $left = 0 ] && break; sleep 0.1
  done
  for p in "${pids[@]}"; do running "$p" && kill -9 "$p"; done
  rm -f "$@"
}
# cancel jobs first so slurmstepd and job processes go away with them
if [ -s "$BASE/run/slurmctld.pid" ] && running "$(cat "$BASE/run/slurmctld.pid")"; then
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 50); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
stop_pids "$BASE"/run/slurmd-*.pid
stop_pids "$BASE/run/slurmctld.pid"
[ "${1:-}" = --keep-munge ] || stop_pids "$BASE/run/munged.pid"
