#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ for a bounded time each, and says how each one ended.
#
#   scripts/fuzz.sh [-t SECONDS] [-j JOBS] [TARGET...]     (default: every target, 20 s, 2 jobs)
#   make fuzz FUZZ_SECONDS=300        the long run        make fuzz-smoke   the CI smoke (15 s)
#
# cargo-fuzz drives libFuzzer with nightly-only rustc flags (-Zsanitizer, sancov passes). The
# project only relies on the stable toolchain (no nightly can be fetched on the build machine),
# so the script sets RUSTC_BOOTSTRAP=1, which lets stable rustc accept them. AddressSanitizer is used when its runtime links (it does on stable 1.95);
# otherwise the targets are rebuilt without a sanitizer (-s none: libFuzzer still works, only
# memory errors in unsafe dependency code would go unseen). FUZZ_SANITIZER=address|none forces.
# Builds run with debug assertions and overflow checks (-a) so arithmetic overflow is a finding.
#
# Seeds: fuzz/corpus/<target>/ (committed, small, never written to). New inputs found during a
# run go to fuzz/corpus-work/<target>/ (git-ignored), crashes to fuzz/artifacts/<target>/
# (git-ignored). A crash fails the script with the reproducer's path and
# `cargo fuzz run <target> <file>` to replay it. Exit status: 0 when every target ran clean.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_EACH=${FUZZ_SECONDS:-20}
JOBS=${FUZZ_JOBS:-2}
MAX_LEN=${FUZZ_MAX_LEN:-4096}
while getopts 't:j:h' o; do
  case $o in
    t) SECONDS_EACH=$OPTARG ;;
    j) JOBS=$OPTARG ;;
    *) sed -n '2,18p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

say() { printf 'fuzz: %s\n' "$*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  say "ERROR: cargo-fuzz is not installed (make setup installs it: cargo install --locked cargo-fuzz)" >&2
  exit 1
fi

export RUSTC_BOOTSTRAP=1
FUZZ=(cargo fuzz)
ALL=$(cargo fuzz list --fuzz-dir fuzz)
TARGETS=("$@")
((${#TARGETS[@]})) || mapfile -t TARGETS <<<"$ALL"
for t in "${TARGETS[@]}"; do
  grep -qx -- "$t" <<<"$ALL" || { say "ERROR: no fuzz target \`$t\` (targets: $(echo $ALL))" >&2; exit 2; }
done

LOGS=fuzz/corpus-work/logs
mkdir -p "$LOGS"

# --- build (once, every target) ----------------------------------------------------------------
SAN=${FUZZ_SANITIZER:-}
build() { "${FUZZ[@]}" build -a -s "$1" --fuzz-dir fuzz >"$LOGS/build.log" 2>&1; }
t0=$(date +%s)
if [[ -n $SAN ]]; then
  build "$SAN" || { tail -30 "$LOGS/build.log" >&2; say "ERROR: build with -s $SAN failed" >&2; exit 1; }
elif build address; then
  SAN=address
else
  say "AddressSanitizer build failed (see $LOGS/build.log); building without a sanitizer"
  cp "$LOGS/build.log" "$LOGS/build-asan.log"
  build none || { tail -30 "$LOGS/build.log" >&2; say "ERROR: build failed" >&2; exit 1; }
  SAN=none
fi
say "built ${#TARGETS[@]} targets (sanitizer: $SAN) in $(($(date +%s) - t0)) s; ${SECONDS_EACH} s each, $JOBS at a time"

# --- run ---------------------------------------------------------------------------------------
run_one() {
  local t=$1 work=fuzz/corpus-work/$t log=$LOGS/$t.log
  mkdir -p "$work" "fuzz/artifacts/$t"
  local dict=()
  [[ -f fuzz/dict/$t.dict ]] && dict=(-dict="fuzz/dict/$t.dict")
  # -timeout: one input taking 10 s is a finding (a hang), not a slow machine.
  "${FUZZ[@]}" run -a -s "$SAN" --fuzz-dir fuzz "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -max_len="$MAX_LEN" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 "${dict[@]}" >"$log" 2>&1
}

pids=()
names=()
start=$(date +%s)
for t in "${TARGETS[@]}"; do
  while (($(jobs -rp | wc -l) >= JOBS)); do sleep 0.5; done
  run_one "$t" &
  pids+=($!)
  names+=("$t")
done

failed=0
printf '%-16s %12s %8s  %s\n' target execs seconds result
for i in "${!pids[@]}"; do
  t=${names[$i]}
  log=$LOGS/$t.log
  rc=0
  wait "${pids[$i]}" || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  if ((rc == 0)); then
    printf '%-16s %12s %8s  %s\n' "$t" "${execs:-?}" "${secs:-?}" clean
  else
    failed=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    printf '%-16s %12s %8s  %s\n' "$t" "${execs:-?}" "${secs:-?}" "FAILED (exit $rc)"
    grep -m1 -A4 -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)' "$log" | sed 's/^/    /' >&2 || true
    if [[ -n $artifact ]]; then
      say "  reproducer: $artifact"
      say "  replay:     RUSTC_BOOTSTRAP=1 cargo fuzz run -a -s $SAN --fuzz-dir fuzz $t $artifact"
    else
      say "  log: $log"
    fi
  fi
done
say "done in $(($(date +%s) - start)) s (+ build); logs in $LOGS/"
exit "$failed"
