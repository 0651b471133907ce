#!/usr/bin/env bash
# Install (if needed) and start a real local Slurm cluster on one Debian/Ubuntu machine:
# munged + slurmctld + N slurmd "nodes" (multiple-slurmd on 127.0.0.1, one port each),
# optional fake GPUs as GRES. No cgroups, no slurmdbd. Must run as root. Idempotent.
# Use it afterwards with:  export SLURM_CONF=$SLURM_BASE/etc/slurm.conf
#
# Origin: the project's own shared helper pair (written for this project, no third-party code or
# licence), adapted for rtune's tests: 4 CPUs per node by default (config_overrides lets a node
# claim more CPUs than the machine has), so the SLURM tests can run several steps side by side on
# a 2-core CI machine. The tests find the cluster through SLURM_CONF, or at the default
# /tmp/slurmtest/etc/slurm.conf when SLURM_CONF is unset.
set -euo pipefail
BASE=${SLURM_BASE:-/tmp/slurmtest}
NODES=${SLURM_NODES:-2}                   # slurmd daemons n1..nN
CPUS=${SLURM_CPUS_PER_NODE:-4}            # may exceed nproc (config_overrides)
GPUS=${SLURM_GPUS_PER_NODE:-2}            # fake GPUs per node, 0 = no GRES
MEM=${SLURM_MEM_PER_NODE:-$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) * 8 / 10 / NODES ))}
CONF=$BASE/etc/slurm.conf
export SLURM_CONF=$CONF PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

# 1. packages (slurm-wlm = slurmctld + slurmd + slurm-client; these pull slurm-wlm-basic-plugins)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || \
   ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# 2. munge (reuse a working munged, e.g. one started by systemd)
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
mkdir -p "$BASE"/{etc,run,log,state,spool,dev}
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  cp /run/munge/munged.pid "$BASE/run/munged.pid"   # marks "we started it"
  munge -n | unmunge >/dev/null
fi

# 3. fake GPU device files (slurm wants char/block devices; symlinks to /dev/null pass)
GRES_NODE=""
if [ "$GPUS" -gt 0 ]; then
  for i in $(seq 0 $((GPUS * NODES - 1))); do ln -sfn /dev/null "$BASE/dev/gpu$i"; done
  GRES_NODE="Gres=gpu:$GPUS"
fi

# 4. config (rewritten each time; daemons restarted only if it changed)
new=$(mktemp)
cat > "$new" <<EOF
ClusterName=localci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd-%n.pid
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/slurmd-%n
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
EOF
if [ "$GPUS" -gt 0 ]; then echo "GresTypes=gpu" >> "$new"; fi
echo "AutoDetect=off" > "$new.gres"
for n in $(seq 1 "$NODES"); do
  echo "NodeName=n$n NodeHostname=$(hostname -s) NodeAddr=127.0.0.1 Port=$((17000 + n)) CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM $GRES_NODE State=UNKNOWN" >> "$new"
  if [ "$GPUS" -gt 0 ]; then
    echo "NodeName=n$n Name=gpu File=$BASE/dev/gpu[$(( (n-1)*GPUS ))-$(( n*GPUS - 1 ))]" >> "$new.gres"
  fi
done
echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" >> "$new"
chmod 644 "$new" "$new.gres"                # readable by non-root submitters

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && ! grep -q "^State:[[:space:]]*Z" "/proc/$(cat "$1")/status" 2>/dev/null; }
if ! cmp -s "$new" "$CONF" || ! cmp -s "$new.gres" "$BASE/etc/gres.conf"; then
  if alive "$BASE/run/slurmctld.pid"; then
    SLURM_BASE=$BASE "$(dirname "$0")/stop-local-slurm.sh" --keep-munge
  fi
  mv "$new" "$CONF"; mv "$new.gres" "$BASE/etc/gres.conf"
else
  rm -f "$new" "$new.gres"
fi

# 5. daemons (fork into background, pid files under $BASE/run, logs under $BASE/log)
alive "$BASE/run/slurmctld.pid" || /usr/sbin/slurmctld -c -f "$CONF"    # -c: fresh state
for n in $(seq 1 "$NODES"); do
  mkdir -p "$BASE/spool/slurmd-n$n"
  alive "$BASE/run/slurmd-n$n.pid" || /usr/sbin/slurmd -f "$CONF" -N "n$n"
done

# 6. wait until every node is idle
for _ in $(seq 150); do
  [ "$(sinfo -h -N -o '%T' 2>/dev/null | grep -cx 'idle\|mixed\|allocated')" -ge "$NODES" ] && break
  sleep 0.2
done
sinfo -N -o '%N %T %c %m %G'
if [ "$(sinfo -h -N -o '%T' | grep -cx 'idle\|mixed\|allocated')" -lt "$NODES" ]; then
  echo "Slurm nodes not ready; see $BASE/log" >&2; scontrol show node | grep -E 'NodeName|State|Reason' >&2; exit 1
fi
echo "Slurm ready. export SLURM_CONF=$CONF"
