#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for the Slurm executor's tests (scripts/test.sh calls it
# before `cargo test`). Idempotent and quick when the cluster is already up.
#
# - Debian's slurm-wlm and munge, installed when missing (as root, no systemd needed).
# - One node (this host) with its real CPU count and memory (from `slurmd -C`), accounting off,
#   select/cons_tres with cores as the consumable (memory is not, so jobs do not claim the whole node).
# - Two fake GPUs for scheduling: character devices /dev/fakegpu0 and /dev/fakegpu1 behind `Gres=gpu:2`,
#   so that two `--gres=gpu:1` jobs run at once with CUDA_VISIBLE_DEVICES=0 and 1 and a third waits.
#   (Regular files in place of the devices do not make Slurm set CUDA_VISIBLE_DEVICES.)
# - munged, slurmctld and slurmd started directly, as root; the script waits until the node is idle and
#   a one-second job has run on it.
#
# Configuration in /etc/slurm, state in /var/spool/slurm*, logs in /var/log/slurm.
set -euo pipefail

log() { echo "slurm-up: $*" >&2; }

node_state() { sinfo -h -N -n "$(hostname -s)" -o '%T' 2>/dev/null | head -n1; }
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# The configuration includes the two-host nodes exactly when scripts/slurm-two-hosts.sh asked for them.
config_current() {
  if [ -s /etc/slurm/two-hosts.conf ]; then
    grep -qs "^Include /etc/slurm/two-hosts.conf" /etc/slurm/slurm.conf
  else
    ! grep -qs "^Include" /etc/slurm/slurm.conf
  fi
}

if command -v sinfo >/dev/null && running /run/slurmctld.pid && running "/run/slurmd-$(hostname -s).pid" \
  && config_current; then
  case "$(node_state || true)" in
    idle|mixed|allocated) log "cluster up"; exit 0 ;;
  esac
fi

if [ "$(id -u)" != 0 ]; then
  log "not root: cannot install or start Slurm here; start a cluster yourself or run as root"
  exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    apt-get install -y -qq slurm-wlm munge >/dev/null
  }
fi

# munge: a key, its directories, the daemon.
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
if ! munge -n </dev/null >/dev/null 2>&1; then
  log "starting munged"
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- munged
  else
    munged --force
  fi
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
fi

# Fake GPUs: character devices (the null device's numbers) that Slurm can hand out.
for i in 0 1; do
  [ -c /dev/fakegpu$i ] || { rm -f /dev/fakegpu$i; mknod /dev/fakegpu$i c 1 3; }
done

host=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
node_line=$(slurmd -C | head -n1)
cat >/etc/slurm/slurm.conf.new <<EOF
# Written by scripts/slurm-up.sh: a one-node test cluster.
ClusterName=runner-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
KillWait=10
SchedulerParameters=sched_interval=2
GresTypes=gpu
$node_line Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
# Nodes added by scripts/slurm-two-hosts.sh (two "hosts" in network namespaces), when present.
if [ -s /etc/slurm/two-hosts.conf ]; then
  echo "Include /etc/slurm/two-hosts.conf" >>/etc/slurm/slurm.conf.new
fi
cat >/etc/slurm/gres.conf.new <<EOF
NodeName=$host Name=gpu File=/dev/fakegpu[0-1]
NodeName=nodea Name=gpu File=/dev/fakegpu2
NodeName=nodeb Name=gpu File=/dev/fakegpu3
EOF
changed=0
for f in slurm.conf gres.conf; do
  if ! cmp -s /etc/slurm/$f.new /etc/slurm/$f; then
    mv /etc/slurm/$f.new /etc/slurm/$f
    changed=1
  else
    rm -f /etc/slurm/$f.new
  fi
done

# A daemon that was told to stop is waited for: one still shutting down would look running and not be
# started again.
stop() {
  running "$1" || return 0
  local pid; pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
if [ $changed = 1 ]; then
  for pidfile in /run/slurmd*.pid /run/slurmctld.pid; do stop "$pidfile"; done
fi
if ! running /run/slurmctld.pid; then log "starting slurmctld"; slurmctld; fi
if ! running "/run/slurmd-$host.pid"; then log "starting slurmd"; slurmd; fi

# A node that slurmctld lists as idle may still be one that its restarted controller only remembers:
# a one-second job proves that jobs run.
smoke() {
  local out
  if out=$(timeout 120 sbatch --wait --parsable -J runner-smoke -t 1 -o /dev/null "$@" --wrap true 2>&1); then
    return 0
  fi
  log "a one-second test job did not run (sbatch $*: $out)"
  squeue -h -n runner-smoke -o %i | xargs -r scancel
  sinfo -N >&2 || true
  tail -n 20 /var/log/slurm/slurmctld.log >&2 || true
  return 1
}

for _ in $(seq 150); do
  state=$(node_state || true)
  case "$state" in
    idle|mixed|allocated) smoke -w "$host" || exit 1; log "cluster up ($state)"; exit 0 ;;
    down*|drain*|inval*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.2
done
log "the node did not become idle; see /var/log/slurm/slurmctld.log and slurmd.log"
sinfo -N >&2 || true
exit 1
