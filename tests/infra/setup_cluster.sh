#!/bin/bash
# A single-node Slurm test cluster (with the Torque wrappers) and an OpenSSH server on
# 127.0.0.1, for the tests of the Slurm adapter and the end-to-end tests.
#
# Why a script and not a container image: the tests must run on the developer's machine and in
# CI containers alike, without systemd, so everything is started directly and the script checks
# each piece before starting it. Running it again is cheap: it installs, writes and starts only
# what is missing or changed.
#
# Usage: tests/infra/setup_cluster.sh            (as root, on Debian or a Debian derivative)
#
# Environment:
#   DASSCOD_TEST_CLUSTER_DIR   generated state (keys, configs, logs, spool)
#                              default /var/lib/dasscod-test-cluster
#   DASSCOD_TEST_SSH_PORT      sshd port on 127.0.0.1, default 2222 (22 may be taken)
#   DASSCOD_TEST_CLUSTER_WAIT  seconds to wait for the node to come up, default 60
#
# Writes $DASSCOD_TEST_CLUSTER_DIR/cluster.env (KEY=value lines) for the tests.
#
# Exit status: 0 ready; 1 something failed (message on stderr); 77 impossible on this machine
# (not root, no apt-get/dpkg) -- 77 is the conventional "skip" status, so callers can skip.
#
# Accounting (Slurm 22.05 in Debian 12): without slurmdbd (which needs MySQL/MariaDB) the only
# accounting storage is accounting_storage/none, and plain `sacct` then fails with
# "Slurm accounting storage is disabled". `sacct --completion` (-c) still works: it reads the
# job completion log written by jobcomp/filetxt on the machine where sacct runs, so on this
# single-node cluster it reports every finished job (State, ExitCode, JobName; no Reason).
# The adapter falls back to it when plain sacct says accounting is disabled.

set -euo pipefail

SKIP=77
STATE=${DASSCOD_TEST_CLUSTER_DIR:-/var/lib/dasscod-test-cluster}
SSH_PORT=${DASSCOD_TEST_SSH_PORT:-2222}
WAIT_S=${DASSCOD_TEST_CLUSTER_WAIT:-60}
USER_NAME=dassco
PARTITION=dassco
NODE=localhost
# python3/python3-venv: the cluster's own Python, which runs the job runner from a venv on the
# cluster's disk (the tests install it there, as a site would; see tests/slurm/conftest.py).
PACKAGES=(munge slurm-wlm slurm-wlm-torque openssh-server openssh-client python3 python3-venv)
START=$(date +%s)

say() { printf 'setup_cluster: %s\n' "$*"; }
die() { printf 'setup_cluster: error: %s\n' "$*" >&2; exit 1; }
skip() { printf 'setup_cluster: impossible here: %s\n' "$*" >&2; exit "$SKIP"; }

[ "$(id -u)" -eq 0 ] || skip "must run as root (it installs packages and starts daemons)"
command -v apt-get >/dev/null && command -v dpkg-query >/dev/null \
    || skip "needs a Debian system with apt-get and dpkg"

# Is the process in this pid file alive and running the expected program?
alive() {  # alive PIDFILE COMM
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]
}

# Stop a daemon that this script started (found through its pid file), and wait for it to go.
stop() {  # stop PIDFILE COMM
    local pid i
    alive "$1" "$2" || return 0
    pid=$(cat "$1")
    kill "$pid"
    for i in $(seq 50); do
        [ -d "/proc/$pid" ] || return 0
        sleep 0.1
    done
    die "$2 (pid $pid) did not stop within 5 s"
}

# Write a file only when its content changes; returns 0 if it was written.
put() {  # put PATH MODE < content
    local tmp
    tmp=$(mktemp "$1.XXXXXX")
    cat >"$tmp"
    chmod "$2" "$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$1"
    return 0
}

# -- packages
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
else
    say "packages present: ${PACKAGES[*]}"
fi

# -- directories
mkdir -p "$STATE"/{etc,log,run,ssh} "$STATE/slurm"/{ctld,d,jobs}
chmod 755 "$STATE" "$STATE/slurm"
chmod 1777 "$STATE/slurm/jobs"  # job output of any submitting user

# -- munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating the munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munged running"
else
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null || die "munged does not answer"
fi

# -- the dedicated user
if ! id "$USER_NAME" >/dev/null 2>&1; then
    say "creating user $USER_NAME"
    useradd --create-home --shell /bin/bash "$USER_NAME"
fi
# useradd leaves the password "!" (locked), and sshd without PAM refuses locked accounts even
# for key logins; "*" means "no password" without locking.
if [ "$(getent shadow "$USER_NAME" | cut -d: -f2)" != "*" ]; then
    usermod -p '*' "$USER_NAME"
fi

# -- slurm.conf (the machine's CPUs and memory, read now)
hw=$(slurmd -C | head -n 1)
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
[ -n "$cpus" ] && [ -n "$memory" ] || die "cannot read CPUs and memory from 'slurmd -C': $hw"
mkdir -p /etc/slurm
conf_changed=0
# What a reconfigure cannot change (everything but comments, SchedulerParameters and Epilog):
# when only those changed, `scontrol reconfigure` is enough and running jobs are left alone.
needs_restart() {
    grep -v -e '^#' -e '^SchedulerParameters=' -e '^Epilog=' "$1" 2>/dev/null || true
}
before=$(needs_restart /etc/slurm/slurm.conf)
put /etc/slurm/slurm.conf 0644 <<EOF && conf_changed=1
# Written by dasscod tests/infra/setup_cluster.sh -- a single-node test cluster.
ClusterName=dasscodtest
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
# slurmctld runs as the cluster user: see the jobcomp log below.
SlurmUser=$USER_NAME
SlurmdUser=root
StateSaveLocation=$STATE/slurm/ctld
SlurmdSpoolDir=$STATE/slurm/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: containers rarely delegate them.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# Short test jobs: run the backfill pass every second, let one completion start the next
# pending job at once, and do not hold batch jobs back for up to 3 s to schedule them in bulk
# (the defaults favour big clusters: a pass every 30 s, batch_sched_delay=3). Measured with
# twelve 2 s jobs on the two CPUs: 17-21 s without batch_sched_delay=0, 15 s with it.
SchedulerParameters=bf_interval=1,sched_min_interval=0,batch_sched_delay=0
# An epilog, even one that does nothing, makes slurmd send an epilog-complete message when a
# job ends, and slurmctld runs its scheduler on that message at once; without one the freed
# CPU waits for the next scheduler or backfill tick (up to a second). Twelve 2 s jobs on the
# two CPUs: 15 s without, 12.6 s with (12 s is the ideal).
Epilog=/bin/true
# No slurmdbd: plain sacct is disabled; 'sacct -c' reads this completion log (see the header).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/slurm/jobcomp.log
# Finished jobs stay visible to squeue for this long before only sacct knows them.
MinJobAge=300
ReturnToService=2
MpiDefault=none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
[ "$conf_changed" = 1 ] && say "wrote /etc/slurm/slurm.conf (CPUs=$cpus RealMemory=${memory}MB)" \
    || say "slurm.conf up to date (CPUs=$cpus RealMemory=${memory}MB)"

if [ "$conf_changed" = 1 ] && [ "$before" = "$(needs_restart /etc/slurm/slurm.conf)" ] \
        && alive "$STATE/run/slurmctld.pid" slurmctld && scontrol reconfigure; then
    say "only scheduler settings changed: slurmctld reconfigured"
elif [ "$conf_changed" = 1 ]; then
    # A changed node definition needs both daemons restarted, not just a reconfigure.
    stop "$STATE/run/slurmd.pid" slurmd
    stop "$STATE/run/slurmctld.pid" slurmctld
fi
# `sacct --completion` loads the jobcomp/filetxt plugin, which opens the log for appending in
# every process, sacct included, and dies ("fatal: open ...: Permission denied") if it cannot;
# the plugin also resets the file's mode to 0644 whenever it can. So the one user who may run
# sacct over SSH -- the cluster user -- must own the log, and slurmctld, which writes it, runs
# as that user (SlurmUser above). Real clusters keep accounting in slurmdbd instead.
touch "$STATE/slurm/jobcomp.log" "$STATE/log/slurmctld.log"
chown "$USER_NAME:$USER_NAME" "$STATE/log" "$STATE/log/slurmctld.log" "$STATE/slurm/jobcomp.log"
chown -R "$USER_NAME:$USER_NAME" "$STATE/slurm/ctld"
chmod 0644 "$STATE/slurm/jobcomp.log"
if alive "$STATE/run/slurmctld.pid" slurmctld; then
    say "slurmctld running (pid $(cat "$STATE/run/slurmctld.pid"))"
else
    say "starting slurmctld"
    slurmctld || die "slurmctld did not start; see $STATE/log/slurmctld.log"
fi
if alive "$STATE/run/slurmd.pid" slurmd; then
    say "slurmd running (pid $(cat "$STATE/run/slurmd.pid"))"
else
    say "starting slurmd"
    slurmd -N "$NODE" || die "slurmd did not start; see $STATE/log/slurmd.log"
fi

# -- wait until the node takes jobs
deadline=$(($(date +%s) + WAIT_S))
state=
while :; do
    state=$(sinfo -h -n "$NODE" -p "$PARTITION" -o %T 2>/dev/null || true)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|fail*)
            # A node that was down before (e.g. the previous slurmd died) is put back.
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] \
        || die "node $NODE not up within ${WAIT_S}s (state '${state:-none}'); see $STATE/log/"
    sleep 0.5
done
say "node $NODE is $state in partition $PARTITION"

# -- sshd on 127.0.0.1 with its own host key and a key for $USER_NAME
[ -f "$STATE/ssh/host_ed25519_key" ] \
    || ssh-keygen -q -t ed25519 -N '' -C "dasscod-test-host" -f "$STATE/ssh/host_ed25519_key"
[ -f "$STATE/ssh/id_ed25519" ] \
    || ssh-keygen -q -t ed25519 -N '' -C "dasscod-test-$USER_NAME" -f "$STATE/ssh/id_ed25519"
home=$(getent passwd "$USER_NAME" | cut -d: -f6)
install -d -o "$USER_NAME" -g "$USER_NAME" -m 0700 "$home/.ssh"
put "$home/.ssh/authorized_keys" 0600 <"$STATE/ssh/id_ed25519.pub" \
    && say "authorised the test key for $USER_NAME"
chown "$USER_NAME:$USER_NAME" "$home/.ssh/authorized_keys"
put "$STATE/ssh/known_hosts" 0644 <<EOF || true
[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1,2 "$STATE/ssh/host_ed25519_key.pub")
EOF
sshd_changed=0
put "$STATE/ssh/sshd_config" 0644 <<EOF && sshd_changed=1
# Written by dasscod tests/infra/setup_cluster.sh
ListenAddress 127.0.0.1
Port $SSH_PORT
HostKey $STATE/ssh/host_ed25519_key
PidFile $STATE/run/sshd.pid
AllowUsers $USER_NAME
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
AuthorizedKeysFile .ssh/authorized_keys
MaxStartups 50:30:100
MaxSessions 50
Subsystem sftp internal-sftp
EOF
install -d -m 0755 /run/sshd
/usr/sbin/sshd -t -f "$STATE/ssh/sshd_config" || die "sshd rejects $STATE/ssh/sshd_config"
[ "$sshd_changed" = 1 ] && stop "$STATE/run/sshd.pid" sshd
if alive "$STATE/run/sshd.pid" sshd; then
    say "sshd running on 127.0.0.1:$SSH_PORT (pid $(cat "$STATE/run/sshd.pid"))"
else
    say "starting sshd on 127.0.0.1:$SSH_PORT"
    /usr/sbin/sshd -f "$STATE/ssh/sshd_config" -E "$STATE/log/sshd.log"
fi
ssh_ok=
for _ in $(seq 50); do
    if out=$(ssh -o LogLevel=ERROR -i "$STATE/ssh/id_ed25519" -p "$SSH_PORT" \
            -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes \
            -o UserKnownHostsFile="$STATE/ssh/known_hosts" -o ConnectTimeout=5 \
            "$USER_NAME@127.0.0.1" sinfo -h -o %P 2>&1); then
        ssh_ok=1
        break
    fi
    sleep 0.2
done
[ -n "$ssh_ok" ] || die "cannot ssh to $USER_NAME@127.0.0.1:$SSH_PORT: $out"
say "ssh $USER_NAME@127.0.0.1:$SSH_PORT works (sees partition ${out%\*})"

# -- what the tests read
put "$STATE/cluster.env" 0644 <<EOF || true
# Written by tests/infra/setup_cluster.sh; read by the tests (KEY=value, no quoting).
DASSCOD_TEST_CLUSTER_DIR=$STATE
SLURM_PARTITION=$PARTITION
SLURM_JOBS_DIR=$STATE/slurm/jobs
SLURM_JOBCOMP_LOG=$STATE/slurm/jobcomp.log
SSH_HOST=127.0.0.1
SSH_PORT=$SSH_PORT
SSH_USER=$USER_NAME
SSH_KEY=$STATE/ssh/id_ed25519
SSH_KNOWN_HOSTS=$STATE/ssh/known_hosts
EOF
say "ready in $(($(date +%s) - START)) s; environment for tests in $STATE/cluster.env"
