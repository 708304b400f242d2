#!/usr/bin/env bash
# Two more "hosts" for the test cluster of scripts/slurm-up.sh, so that one campaign's results come from
# two nodes and merge into one report: nodes `nodea` and `nodeb`, each a slurmd in a network namespace
# of its own (a veth pair to this host, 10.231.1.2 and 10.231.2.2) and a UTS namespace with its own host
# name, with one fake GPU each (/dev/fakegpu2, /dev/fakegpu3), in the partition `twohosts`. They share
# this machine's filesystem, as cluster nodes share one. Idempotent; run as root after slurm-up.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "slurm-two-hosts: $*" >&2; }
host=$(hostname -s)

for i in 2 3; do
  [ -c /dev/fakegpu$i ] || { rm -f /dev/fakegpu$i; mknod /dev/fakegpu$i c 1 3; }
done

# The namespaces, their links, and name resolution inside them (each node's slurmd gets
# /etc/netns/NAME/hosts over /etc/hosts): the controller's name must resolve to this host's side of the
# link, not to the namespace's own loopback.
net=1
for node in nodea nodeb; do
  ns=ns-$node
  if ! ip netns list | grep -qw "$ns"; then
    ip netns add "$ns"
    ip link add "vh-$node" type veth peer name "vn-$node"
    ip link set "vn-$node" netns "$ns"
    ip addr add "10.231.$net.1/24" dev "vh-$node"
    ip link set "vh-$node" up
    ip netns exec "$ns" ip addr add "10.231.$net.2/24" dev "vn-$node"
    ip netns exec "$ns" ip link set "vn-$node" up
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip route add default via "10.231.$net.1"
  fi
  mkdir -p "/etc/netns/$ns"
  printf '127.0.0.1 localhost\n10.231.%s.1 %s\n10.231.%s.2 %s\n' "$net" "$host" "$net" "$node" \
    >"/etc/netns/$ns/hosts"
  net=$((net + 1))
done

cat >/etc/slurm/two-hosts.conf.new <<EOF
# Written by scripts/slurm-two-hosts.sh.
NodeName=nodea NodeAddr=10.231.1.2 CPUs=1 RealMemory=1000 Gres=gpu:1 State=UNKNOWN
NodeName=nodeb NodeAddr=10.231.2.2 CPUs=1 RealMemory=1000 Gres=gpu:1 State=UNKNOWN
PartitionName=twohosts Nodes=nodea,nodeb MaxTime=INFINITE State=UP
EOF
if ! cmp -s /etc/slurm/two-hosts.conf.new /etc/slurm/two-hosts.conf; then
  mv /etc/slurm/two-hosts.conf.new /etc/slurm/two-hosts.conf
else
  rm -f /etc/slurm/two-hosts.conf.new
fi
scripts/slurm-up.sh

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
for node in nodea nodeb; do
  if ! running "/run/slurmd-$node.pid"; then
    log "starting slurmd for $node"
    # Its network namespace, and mount and UTS namespaces of its own: its host name, and its view of
    # /etc/hosts. (Not `ip netns exec`: it remounts /sys, hiding the cgroup filesystem slurmd needs.)
    nsenter --net="/run/netns/ns-$node" unshare --mount --uts sh -c \
      "mount --bind /etc/netns/ns-$node/hosts /etc/hosts && hostname $node && exec slurmd -N $node"
  fi
done
for _ in $(seq 150); do
  states=$(sinfo -h -N -p twohosts -o '%T' 2>/dev/null | sort -u | tr '\n' ' ')
  case "$states" in
    "idle "|"idle mixed "|"mixed "|"allocated "*)
      # Listed as idle is not yet running jobs (see slurm-up.sh): a one-second job on each proves it.
      for node in nodea nodeb; do
        timeout 120 sbatch --wait -J runner-smoke -p twohosts -w $node -t 1 -o /dev/null --wrap true >/dev/null || {
          log "a one-second test job did not run on $node"
          squeue -h -n runner-smoke -o %i | xargs -r scancel
          sinfo -N >&2 || true
          exit 1
        }
      done
      log "nodea and nodeb up ($states)"; exit 0 ;;
  esac
  for node in nodea nodeb; do
    case "$(sinfo -h -N -n $node -o '%T' 2>/dev/null)" in
      down*|drain*|inval*) scontrol update nodename=$node state=resume >/dev/null 2>&1 || true ;;
    esac
  done
  sleep 0.2
done
log "nodea and nodeb did not become idle; see /var/log/slurm/slurmd-node*.log"
sinfo -N >&2 || true
exit 1
