#!/usr/bin/env bash
# Run a command on a share of this machine's CPU time: every core at 1/FACTOR of its speed, as on a slower machine.
# A stand-in for a slower CPU of the same kind (the Linux CFS quota of a cgroup; needs root and the cgroup-v1 cpu
# controller at /sys/fs/cgroup/cpu): compute-bound work takes FACTOR times as long, waiting on disk or network does
# not. With scripts/as-avx2.sh it stands in for an AVX2-only machine FACTOR times slower than this one:
#   bash scripts/slower.sh 2.1 bash scripts/as-avx2.sh bash scripts/test.sh
set -euo pipefail
factor=${1:?usage: slower.sh FACTOR COMMAND...}
shift
root=/sys/fs/cgroup/cpu
[ -w "$root/cgroup.procs" ] || { echo "slower.sh: needs root and the cgroup-v1 cpu controller at $root" >&2; exit 2; }
group="$root/ijepa-slower-$$"
period=10000  # 10 ms: short periods spread the throttling thinly, so no thread stalls for long
quota=$(python3 -c "import os, sys; print(max(1000, round(os.cpu_count() * $period / float(sys.argv[1]))))" "$factor")
mkdir "$group"
echo "$period" > "$group/cpu.cfs_period_us"
echo "$quota" > "$group/cpu.cfs_quota_us"
cleanup() { echo $$ > "$root/cgroup.procs"; rmdir "$group" 2>/dev/null || true; }
trap cleanup EXIT
echo $$ > "$group/cgroup.procs"  # this shell and everything it starts from here on
set +e
"$@"
rc=$?
set -e
exit $rc
