#!/bin/sh
# Park the resumable state of the background runs in git (a new session's checkout holds only
# what landed): each run folder's checkpoints, configs, results and logs, all small for LeNet.
# sh runs/park.sh DIR|LOG...   (then commit; rerunning a run's command resumes it)
set -eu
for d in "$@"; do
    if [ -f "$d" ]; then git add -f "$d"; continue; fi
    [ -d "$d" ] || continue
    find "$d" -type f \( -name '*.pt' -o -name '*.json' -o -name '*.log' \) -size -4M \
        -exec git add -f {} +
done
