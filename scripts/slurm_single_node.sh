#!/usr/bin/env bash
# A real single-node SLURM on this machine, for the test suite: Debian's slurmctld, slurmd and
# munge, as root, without systemd, with two fake GPUs declared as a `gpu` GRES so that jobs asking
# for GPUs are scheduled. No accounting daemon (status checks use squeue).
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

if scontrol ping 2>/dev/null | grep -q UP && sinfo -h -o %T 2>/dev/null | grep -q idle; then
    say "already running"; exit 0
fi

CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
mkdir -p "$CONF" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
for n in 0 1; do [ -e /dev/fakegpu$n ] || mknod /dev/fakegpu$n c 1 3; done
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
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:fake:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
cat > "$CONF/gres.conf" <<CONF
AutoDetect=off
NodeName=localhost Name=gpu Type=fake File=/dev/fakegpu[0-1]
CONF
rm -f "$CONF/cgroup.conf"

chown -R munge:munge /run/munge /etc/munge /var/lib/munge /var/log/munge 2>/dev/null || true
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null;
                                 chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
munge -n | unmunge >/dev/null || { say "munge does not work"; exit 1; }
pgrep -x slurmctld >/dev/null || slurmctld -c
for _ in $(seq 60); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
pgrep -x slurmd >/dev/null || slurmd -N localhost
for _ in $(seq 120); do
    state=$(sinfo -h -o %T 2>/dev/null || true)
    case "$state" in idle*|mix*|alloc*) say "up: node localhost $state, $CPUS CPUs, $MEM_MB MB, gpu:fake:2"; exit 0;; esac
    sleep 0.5
done
say "the node did not become idle (sinfo: ${state:-nothing}); see /var/log/slurm/"
exit 1
