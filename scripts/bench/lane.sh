# Sourced (bash) by the benchmarks that run in the nested-KVM lane
# (docs/nested.md): scripts/bench/boot-nested and scripts/bench-image
# --nested. It sets
#   lane_cpus     the outer VM's vCPUs: OUTER_CPUS, default 1. With two,
#                 the outer VM froze (soft lockups on both, or silent) in 3
#                 of 9 lane runs on 2026-12-07; the inner VMs have one vCPU;
#   lane_silence  SILENCE, default 300: the seconds a lane may print nothing
#                 before lane_watch stops it as frozen (keep it well above
#                 the heartbeat's 20 s);
#   lane_inner    the scripts/nested-kvm arguments that add
#                 scripts/bench/lane-inner.sh to the outer VM as
#                 /lane-inner.sh, which the lane's script sources: `lim`, the
#                 per-run limit (RUN_TIMEOUT), and `alive`, the heartbeat
#                 that keeps a long run from looking like a frozen lane;
# and defines lane_watch.
lane_cpus=${OUTER_CPUS:-1}
lane_silence=${SILENCE:-300}
lane_inner=(--add "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lane-inner.sh:/lane-inner.sh")
lane_frozen=no

# lane_watch LOG ENDED CMD...: runs CMD (a scripts/nested-kvm command line)
# in its own process group (setsid), so that a frozen lane can be stopped
# whole: nested-kvm, microrun's qemu engine and QEMU. Its stdout and stderr
# are shown line by line as they come and appended to LOG; heartbeat lines
# (`@@lane-alive ...`, from lane-inner.sh) are neither shown nor logged:
# they only say that the outer VM still runs. When CMD prints nothing for
# lane_silence seconds it is stopped, with a line that ends in ENDED (what
# the caller keeps of it), lane_frozen is set to yes and the status is 1;
# else the status is CMD's.
lane_watch() {
  local log=$1 ended=$2 fd pid line status=0
  shift 2
  # A process substitution rather than a coproc: bash closes a coproc's
  # descriptor when it reaps the process, and the lines not yet read are lost.
  exec {fd}< <(exec setsid "$@" 2>&1)
  pid=$!
  while :; do
    if IFS= read -r -t "$lane_silence" line <&"$fd"; then
      case $line in @@lane-alive*) continue ;; esac
      printf '%s\n' "$line" | tee -a "$log"
    elif [ $? -gt 128 ]; then
      echo "the outer VM printed nothing for $lane_silence s: stopped as frozen; $ended"
      kill -KILL -- "-$pid" 2>/dev/null
      lane_frozen=yes
      break
    else
      break
    fi
  done
  exec {fd}<&-
  wait "$pid" 2>/dev/null || status=$?
  [ "$lane_frozen" = no ] || status=1
  return "$status"
}
