#!/bin/sh
# FID of 500 samples (seeds 0-499) of each seed-1 run's 40-kimg snapshot against the toy reference statistics that
# toy_table.py and the in-loop FID cache (1,000 real images): the same numbers toy_table.measure gives (checked on
# seed 0's D2O: 148.07 both ways). Run from the project root after the runs:  sh results/toy-40kimg-s1/measure.sh [RUN ...]
set -e
ref=refs/toy-16x16-1000-bdb4b0b28d.npz
for run in ${*:-d2o diffratio-rkl diffratio-reinit-io diffratio-reinit-inner}; do
    dir=results/toy-40kimg-s1/$run
    python sample.py --net $dir/network-snapshot-000040000.pt --seeds 0-499 --npz $dir/samples.npz \
        --grid results/toy-40kimg-s1/grid-$run.png
    echo "$run: $(python fid.py calc --images $dir/samples.npz --ref $ref --count 500 | tail -n 1)"
done
