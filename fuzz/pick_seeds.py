#!/usr/bin/env python3
"""Picks at most CAP inputs of a libFuzzer merge control file, greedily by new features.

    fuzz/target/x86_64-unknown-linux-gnu/release/<target> -merge=1 -use_counters=0 -use_cmp=0 \
        -merge_control_file=CTL <empty dir> <cmin'd corpus>
    python3 fuzz/pick_seeds.py CTL fuzz/seeds/<target> 300

Used to keep fuzz/seeds/<target>/ at a few hundred files (fuzz/README.md).
"""
import os
import shutil
import sys

ctl, out, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(ctl).read().split("\n")
count = int(lines[0])
files = lines[2 : 2 + count]
features = {}
for line in lines[2 + count :]:
    parts = line.split()
    if len(parts) >= 2 and parts[0] == "FT":
        features[int(parts[1])] = set(parts[2:])
every = set().union(*features.values()) if features else set()
covered, chosen = set(), []
while len(chosen) < cap:
    best = max(features, key=lambda i: (len(features[i] - covered), -os.path.getsize(files[i])), default=None)
    if best is None or not features[best] - covered:
        break
    covered |= features.pop(best)
    chosen.append(best)
os.makedirs(out, exist_ok=True)
for i in chosen:
    shutil.copy(files[i], out)
print(f"{len(chosen)} files cover {len(covered)} of {len(every)} features")
