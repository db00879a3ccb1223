# Starts the direct scheduler's job wrapper in a session of its own -- so neither the daemon's
# death nor a Ctrl-C in its terminal reaches it -- with its output away from our pipes, and
# prints its pid. Run as
# `sh -c "$(cat launch.sh)" dasscod-direct-launch WRAPPER_NAME WRAPPER STATE LIMIT ...`.
name=$1 wrapper=$2
shift 2
setsid sh -c "$wrapper" "$name" "$@" </dev/null >>"$1/wrapper.log" 2>&1 &
echo "$!"
