# Sourced (busybox sh) inside the nested-KVM lane by the benchmarks' lane
# scripts, as /lane-inner.sh (scripts/bench/lane.sh adds it). It needs
# RUN_TIMEOUT, the per-run limit in seconds.
#
# The lane's stdout, also for the heartbeat of a run whose output is
# captured ($(...)).
exec 3>&1
# alive CMD...: runs CMD; while it runs, a heartbeat line (`@@lane-alive`)
# goes to the lane's stdout every 20 s, which the host's lane_watch drops:
# a run longer than SILENCE is not taken for a frozen outer VM (a frozen
# one prints no heartbeat either). CMD's status.
alive() {
  # One-second sleeps: the `kill` below leaves no sleep running for long.
  (
    n=0
    while sleep 1; do
      n=$((n + 1))
      [ $((n % 20)) -ne 0 ] || echo "@@lane-alive $n s"
    done
  ) >&3 2>/dev/null &
  alive_beat=$!
  "$@"
  alive_rc=$?
  kill "$alive_beat" 2>/dev/null
  wait "$alive_beat" 2>/dev/null
  return "$alive_rc"
}
# lim CMD...: CMD with the per-run limit, killed after RUN_TIMEOUT seconds
# (busybox timeout: status 143 then), with the heartbeat.
lim() {
  alive timeout "$RUN_TIMEOUT" "$@"
}
