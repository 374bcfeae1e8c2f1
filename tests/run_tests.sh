#!/bin/sh
# Runs each cmocka test binary given on the command line (from the repository root), shows its
# output, and ends with the one summary line CI reads: "N passed, N failed, N skipped".
# A binary that crashes or prints no cmocka summary counts as one failure.
passed=0; failed=0; skipped=0
for t in "$@"; do
    out=$("$t" 2>&1); rc=$?
    printf '%s\n' "$out"
    # a binary may run several cmocka groups: add up every group's summary
    p=$(printf '%s\n' "$out" | sed -n 's/.*\[  PASSED  \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {if (NR) print s}')
    f=$(printf '%s\n' "$out" | sed -n 's/.*\[  FAILED  \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {if (NR) print s}')
    s=$(printf '%s\n' "$out" | sed -n 's/.*\[  SKIPPED \] \([0-9]*\) test.*/\1/p' | awk '{s+=$1} END {if (NR) print s}')
    if [ -z "$p" ] && [ -z "$f" ]; then
        echo "$t: no test summary (exit status $rc): counted as one failure"
        failed=$((failed + 1)); continue
    fi
    passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0})); skipped=$((skipped + ${s:-0}))
    if [ "$rc" -ne 0 ] && [ -z "$f" ]; then
        echo "$t: exited with status $rc: counted as one failure"; failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
