#!/usr/bin/env bash
# The build cache that CI and everyday builds share (CARGO_TARGET_DIR, by default
# ~/.cache/moco/target): its size, and pruning when it grows past a limit.
#
#   scripts/target-cache.sh size  [DIR]
#   scripts/target-cache.sh prune [DIR] [LIMIT_GIB]   (default limit: 40 GiB)
#
# Pruning, only while the cache is over the limit, in this order:
#  1. the incremental-compilation state (each crate rebuilds its own on its next build);
#  2. compiled crates and their fingerprints that no build has read for 3 days (builds of
#     another feature set or of an older Burn: the file system records when a file was last
#     read, at most once a day with the usual `relatime`); build-script outputs stay, since a
#     crate that is still built may include them;
#  3. the whole cache (the next build is cold, as on a fresh machine).
# Cargo's fingerprints decide what is rebuilt (a unit whose output is gone builds again), so
# a pruned cache never gives a stale build, only a slower one.
set -euo pipefail
what=${1:?usage: target-cache.sh size|prune [DIR] [LIMIT_GIB]}
dir=${2:-${CARGO_TARGET_DIR:-$HOME/.cache/moco/target}}
limit_gib=${3:-40}

gib() { du -sk "$1" 2>/dev/null | awk '{ printf "%.1f", $1 / 1048576 }'; }
over() { [ "$(du -sk "$dir" | cut -f1)" -gt $(( limit_gib * 1048576 )) ]; }

case "$what" in
  size)
    if [ -d "$dir" ]; then
      echo "$dir: $(gib "$dir") GiB"
      for sub in "$dir"/*/; do echo "  $(basename "$sub"): $(gib "$sub") GiB"; done
    else
      echo "$dir: empty"
    fi
    ;;
  prune)
    if [ ! -d "$dir" ]; then
      echo "$dir: empty (a cold build)"; exit 0
    fi
    echo "$dir: $(gib "$dir") GiB (limit $limit_gib GiB)"
    if over; then
      find "$dir" -mindepth 2 -maxdepth 2 -type d -name incremental -prune -exec rm -rf {} +
      echo "over the limit: incremental state removed, now $(gib "$dir") GiB"
    fi
    if over; then
      find "$dir" -mindepth 3 -maxdepth 4 -type f -atime +3 \
        \( -path '*/deps/*' -o -path '*/.fingerprint/*' \) -delete
      find "$dir" -mindepth 2 -type d -empty -delete
      echo "over the limit: artefacts unread for 3 days removed, now $(gib "$dir") GiB"
    fi
    if over; then
      rm -rf "$dir"
      echo "still over the limit: the cache is removed (this build is cold)"
    fi
    ;;
  *)
    echo "usage: target-cache.sh size|prune [DIR] [LIMIT_GIB]" >&2; exit 2
    ;;
esac
