# The direct scheduler's detached job wrapper (POSIX sh; see dasscod/cluster/direct/__init__.py).
# Run as `sh -c "$(cat wrapper.sh)" dasscod-direct-job STATE LIMIT KILL_AFTER WORKDIR ARGV...`:
# the job's argv arrives as positional arguments and is never part of the script text. The job
# runs in the background so a SIGTERM (cancel) interrupts `wait` and can be forwarded to
# `timeout`, which passes it on to the job's whole process group.
state=$1 limit=$2 kill_after=$3 workdir=$4
shift 4
child='' term='' interrupted=''
trap 'term=1 interrupted=1; [ -z "$child" ] || kill -TERM "$child" 2>/dev/null' TERM
finish() {
    trap '' TERM  # inherited as ignored by mv: a late cancel cannot lose the exit status
    printf '%s\n' "$1" >"$state/exit.tmp" && mv -f -- "$state/exit.tmp" "$state/exit"
    exit 0
}
date +%s >"$state/started"
# ln (link(2)) fails when "pid" exists: the daemon abandoned this launch, nothing may run.
if ! { printf '%s\n' "$$" >"$state/pid.tmp" && ln -- "$state/pid.tmp" "$state/pid"; }; then
    rm -f -- "$state/pid.tmp"
    echo "dasscod: could not claim $state (abandoned by the daemon?); not running the job"
    exit 0
fi
rm -f -- "$state/pid.tmp"
if [ -e "$state/cancelled" ]; then finish 143; fi
if ! mkdir -p -- "$workdir" || ! cd -- "$workdir"; then
    echo "dasscod: cannot create or enter the workdir $workdir" >>"$state/stderr"
    finish 125
fi
timeout --kill-after="${kill_after}s" "${limit}s" "$@" \
    </dev/null >>"$state/stdout" 2>>"$state/stderr" &
child=$!
if [ -n "$term" ]; then kill -TERM "$child" 2>/dev/null; fi
wait "$child"
status=$?
# After the SIGTERM trap a status above 128 may only mean that it interrupted wait, which then
# has not taken the child's status: wait again for that (127: it had been taken after all).
while [ -n "$interrupted" ] && [ "$status" -gt 128 ]; do
    interrupted=''
    wait "$child"
    again=$?
    [ "$again" -eq 127 ] && break
    status=$again
done
finish "$status"
