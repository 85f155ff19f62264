#!/usr/bin/env bash
# A real SLURM on this single machine, for the test suite: Debian's slurmctld, slurmd and munge,
# as root, without systemd, with fake GPUs declared as a `gpu` GRES so that jobs asking for GPUs
# are scheduled. No accounting daemon (status checks use squeue).
# Two nodes on this one machine (Debian builds SLURM with MULTIPLE_SLURMD: one `slurmd -N <name>` per
# node, each on its own port), node1 and node2, with two fake GPUs each: the default partition
# `debug` holds node1, partition `multi` both (for multi-node jobs). (A node may not be called
# `localhost`: SLURM then takes every other name for it, "Duplicated NodeHostName".)
#   bash scripts/slurm_single_node.sh start   # install if needed, configure, start; idempotent
#   bash scripts/slurm_single_node.sh stop
# Exit status 3 (with the reason on stderr) where it cannot run: not root, or no apt-get.
set -euo pipefail
ACTION=${1:-start}
CONF=/etc/slurm
say() { echo "slurm_single_node: $*" >&2; }

if [ "$ACTION" = stop ]; then
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    exit 0
fi
[ "$(id -u)" = 0 ] || { say "needs root (to install packages and start daemons)"; exit 3; }
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || { say "slurm is not installed and apt-get is not available"; exit 3; }
    export DEBIAN_FRONTEND=noninteractive
    # postinst scripts try to start services and fail without systemd: harmless
    (apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null 2>&1 ||
     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null 2>&1)) ||
        { say "apt-get install slurmctld slurmd slurm-client munge failed"; exit 3; }
fi

node_up() { sinfo -h -n "$1" -o %T 2>/dev/null | grep -q -E '^(idle|mix|alloc)'; }
if scontrol ping 2>/dev/null | grep -q UP && node_up node1 && node_up node2; then
    say "already running"; exit 0
fi
# a cluster from an older version of this script (one node) or half up: start again
pkill -x slurmd 2>/dev/null || true
pkill -x slurmctld 2>/dev/null || true
for _ in $(seq 20); do pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break; sleep 0.5; done

CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
mkdir -p "$CONF" /var/spool/slurmctld /var/spool/slurmd/node1 /var/spool/slurmd/node2 /var/log/slurm /run/munge
for n in 0 1 2 3; do [ -e /dev/fakegpu$n ] || mknod /dev/fakegpu$n c 1 3; done
cat > "$CONF/slurm.conf" <<CONF
ClusterName=nashflow-test
SlurmctldHost=localhost
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
EnforcePartLimits=ALL
MinJobAge=300
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
NodeName=node1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=6818 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:fake:2 State=UNKNOWN
NodeName=node2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=6819 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:fake:2 State=UNKNOWN
PartitionName=debug Nodes=node1 Default=YES MaxTime=INFINITE State=UP
PartitionName=multi Nodes=node1,node2 MaxTime=INFINITE State=UP
CONF
cat > "$CONF/gres.conf" <<CONF
AutoDetect=off
NodeName=node1 Name=gpu Type=fake File=/dev/fakegpu[0-1]
NodeName=node2 Name=gpu Type=fake File=/dev/fakegpu[2-3]
CONF
rm -f "$CONF/cgroup.conf"

chown -R munge:munge /run/munge /etc/munge /var/lib/munge /var/log/munge 2>/dev/null || true
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null;
                                 chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null || { say "munge does not work"; exit 1; }
pgrep -x slurmctld >/dev/null || slurmctld -c
for _ in $(seq 60); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
slurmd -N node1
slurmd -N node2
for _ in $(seq 120); do
    if node_up node1 && node_up node2; then
        say "up: nodes node1 and node2 (partition multi), each $CPUS CPUs, $MEM_MB MB, gpu:fake:2"; exit 0
    fi
    sleep 0.5
done
say "the nodes did not become idle (sinfo: $(sinfo -h -N -o '%N %T' 2>/dev/null | tr '\n' ' ')); see /var/log/slurm/"
exit 1
