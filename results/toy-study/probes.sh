#!/bin/sh
# The toy D2O study (issue #15): every run behind results/toy-study/study.md, from the project root. Each probe is the
# toy preset (`python train.py`) plus its flags, with FID of 500 samples vs 1,000 real images every 5 kimg; one
# thread per run, several at once (a run is bit-identical to the same run alone on the same host). Each run's folder
# keeps options.json and metrics.jsonl in git; study.md and the curves come from them (the commands at the end).
# A clone holds the records but not the training states, so there each probe stops with one line rather than replace
# its records: give another folder (`sh results/toy-study/probes.sh runs/toy-study`) to run them again.
out=${1:-results/toy-study}
# The preset's R1 weight was 0.1 when these ran (the ResNet D's default until 2026-12-04, now 1) and its batch 16 (until
# 2026-12-05, now 8), and its D fresh (until 2026-12-06; now --dinit auto, the trained assets/toy-disc.pt): every probe
# states all three, and a probe's own --r1-gamma, --batch or --dinit, coming later, wins. (Runs that resume a training
# state take its batch and D.)
# Probes that ran with --dinit assets/toy-disc.pt (their records name that path) are written below with the classifier
# file that the asset was byte for byte at the time, so that a rerun does not take today's asset.
probe() {  # NAME SEED KIMG [flags...] -> $out/NAME-sSEED (rerun to resume; a higher KIMG extends)
    name=$1; seed=$2; kimg=$3; shift 3
    mkdir -p "$out/$name-s$seed"
    OMP_NUM_THREADS=1 python train.py --r1-gamma 0.1 --batch 16 --dinit none --kimg "$kimg" --seed "$seed" --fid-every 5 "$@" \
        --rundir "$out/$name-s$seed" \
        >> "$out/$name-s$seed/log.txt" 2>&1
}
fid_of() {  # NET [sample.py flags]: the FID line of its 500 samples of seeds 0-499 (those of every FID here)
    python sample.py --net "$@" --seeds 0-499 --npz $out/fid-of.npz >/dev/null
    python fid.py calc --images $out/fid-of.npz --ref refs/toy-16x16-1000-bdb4b0b28d.npz --count 500 | tail -1
    rm $out/fid-of.npz
}
# 10-kimg probes, four at a time (each holds ~2 GB)
probe base 0 10 & probe base 1 10 & probe dlr5e-4 0 10 --dlr 5e-4 & probe dlr5e-3 0 10 --dlr 5e-3 & wait
probe lr3e-4 0 10 --lr 3e-4 & probe dw128 0 10 --dwidth 128 & probe ddepth2 0 10 --ddepth 2 & probe dsteps2 0 10 --d-steps 2 & wait
probe r1g0.01 0 10 --r1-gamma 0.01 & probe r1g0.01 1 10 --r1-gamma 0.01 & probe batch8 0 10 --batch 8 & probe batch8 1 10 --batch 8 & wait
probe ema0 0 10 --ema 0 & probe ema0 1 10 --ema 0 & wait  # G itself: EMA does not change the training, so vs base = EMA's worth
# The preset's curve to 200 kimg: results/toy-40kimg/d2o (toy_table.py --kimg 40, seed 0: the preset with FID every
# 5 kimg) continued; snapshots every 5 kimg
mkdir -p $out/long-base-s0 && cp results/toy-40kimg/d2o/options.json results/toy-40kimg/d2o/metrics.jsonl \
    results/toy-40kimg/d2o/training-state-000040000.pt $out/long-base-s0/
long_base() { OMP_NUM_THREADS=1 python train.py --kimg "$1" --fid-every 5 --snap 5 --rundir $out/long-base-s0 \
    >> $out/long-base-s0/log.txt 2>&1; }
long_base 80
# EMA beyond 10 kimg: FID of G itself from a training state (EMA does not change training, so this is the --ema 0
# run's G), with G's weights put into the G_ema snapshot of the same kimg -> ema-vs-g.txt
fid_of_g() {  # RUNDIR NIMG(9 digits): the state's G as $out/g.pt, its FID
    python -c "import sys, ckpt; state = ckpt.read_state(sys.argv[1]); net, meta = ckpt.read_checkpoint(sys.argv[2])
net.load_state_dict(state['G']); ckpt.save_checkpoint(sys.argv[3], net, **meta)" \
        "$1/training-state-$2.pt" "$1/network-snapshot-$2.pt" $out/g.pt
    echo "$1 at $2 images, G itself: $(fid_of $out/g.pt)"; rm $out/g.pt
}
{ fid_of_g results/toy-40kimg/d2o 000040000; fid_of_g results/toy-40kimg-s1/d2o 000040000
  fid_of_g $out/long-base-s0 000080000; } > $out/ema-vs-g.txt
long_base 200
fid_of_g $out/long-base-s0 000200000 >> $out/ema-vs-g.txt
# The best 10-kimg variant, R1 gamma 0.01 (both seeds below the base): both seeds to 40 kimg, D2O-F beside it (FID
# every 10 kimg), then seed 0's curve on toward 200 kimg (stopped at 90 so far; a resume continues exactly)
probe r1g0.01 0 40 --r1-gamma 0.01 --snap 5 & probe r1g0.01 1 40 --r1-gamma 0.01 --snap 5 & wait
probe d2o-f-r1g0.01 0 40 --freeze 1 --r1-gamma 0.01 --snap 5 --fid-every 10
probe r1g0.01 0 200 --r1-gamma 0.01 --snap 5
# lr cool-down: a training state continued at a tenth of both lrs (G 1e-5, D 2e-4; their ratio kept), against the
# preset continued at its own lrs from the same state (long-base-s1: seed 1's 40-kimg state, like long-base-s0's)
copy_state() {  # SRC_RUNDIR NIMG(9 digits) NAME: a run's state as the start of $out/NAME
    mkdir -p $out/$3 && cp $1/options.json $1/metrics.jsonl $1/training-state-$2.pt $out/$3/
}
copy_state results/toy-40kimg/d2o 000040000 cool40-s0; copy_state results/toy-40kimg-s1/d2o 000040000 cool40-s1
copy_state results/toy-40kimg-s1/d2o 000040000 long-base-s1; copy_state $out/long-base-s0 000200000 cool200-s0
cont() {  # NAME KIMG [flags...]: continue $out/NAME (seed 1's copies ran without in-loop FID: --fid-num 500 adds it)
    name=$1; kimg=$2; shift 2
    OMP_NUM_THREADS=1 python train.py --kimg "$kimg" --fid-num 500 --fid-every 5 --snap 5 "$@" --rundir $out/$name \
        >> $out/$name/log.txt 2>&1
}
cont cool40-s0 50 --lr 1e-5 --dlr 2e-4 & cont cool40-s1 50 --lr 1e-5 --dlr 2e-4 & wait
cont cool200-s0 220 --lr 1e-5 --dlr 2e-4 & cont long-base-s1 50 & wait
# Colour census of the samples (fid.py census) and the FID their colour frequencies alone cost (real images drawn with
# the same colour pairs), and whether the teacher's network can hold the teacher's Heun map in one step at all
# (capacity.py kd: regression onto 5,000 Heun-18 pairs) -> capacity.txt
census() {  # NAME NET [sample.py flags]: 500 samples as $out/census/NAME.npz, their census and recoloured FID
    name=$1; net=$2; shift 2; mkdir -p $out/census
    python sample.py --net $net --seeds 0-499 --npz $out/census/$name.npz "$@" >/dev/null
    python fid.py census --images $out/census/$name.npz
    python results/toy-study/capacity.py recolour --images $out/census/$name.npz --dest $out/census/like-$name.npz
    n=$(python -c "import numpy; print(len(numpy.load('$out/census/like-$name.npz')['arr_0']))")
    echo "  real images with its colour pairs: $(python fid.py calc --images $out/census/like-$name.npz \
        --ref refs/toy-16x16-1000-bdb4b0b28d.npz --count $n | tail -1)"
}
{ python fid.py census --images datasets/toy-16x16.zip
  census heun18 assets/toy-edm.pt --steps 18; census raw assets/toy-edm.pt --raw
  census d2o40-s0 results/toy-40kimg/d2o/network-snapshot-000040000.pt
  census d2o40-s1 results/toy-40kimg-s1/d2o/network-snapshot-000040000.pt
  census d2o200-s0 $out/long-base-s0/network-snapshot-000200000.pt; } > $out/census.txt
python results/toy-study/capacity.py pairs --seeds 10000-14999 && python results/toy-study/capacity.py kd --kimg 100
# A longer EMA (half-life 20 % of the images seen, not 5 %; EMA does not change training, so G's path is the preset's)
# and the wide D at a second seed
probe ema20 0 40 --ema-rampup 0.2 --snap 5 --fid-every 10 & probe ema20 1 40 --ema-rampup 0.2 --snap 5 --fid-every 10 & wait
probe dw128 1 10 --dwidth 128
cp $out/kd/log.txt $out/kd.txt  # the regression's FID curve; its 100-kimg samples' first 64 (seeds 0-63, as every grid):
python -c "import numpy, sample; sample.save_grid(numpy.load('$out/kd/samples-0100.npz')['arr_0'][:64].transpose(0, 3, 1, 2),
    '$out/grid-kd-100kimg.png')"
# The wide D to 40 kimg at both seeds (the same command from scratch gives the same runs: the 10-kimg points match);
# its FID record is kept in git (dw128-s0/metrics.jsonl, dw128-s1/metrics.jsonl)
probe dw128 0 40 --dwidth 128 & probe dw128 1 40 --dwidth 128 & wait
# The D on a trainable copy of the teacher's encoder (--disc teacher, sigma 0.1) at 10x and 100x its default D lr
probe teacher-dlr1e-3 0 10 --disc teacher --dlr 1e-3 & probe teacher-dlr1e-3 1 10 --disc teacher --dlr 1e-3 & wait
probe teacher-dlr1e-2 0 10 --disc teacher --dlr 1e-2 & probe teacher-dlr1e-2 1 10 --disc teacher --dlr 1e-2 & wait
probe teacher-dlr1e-3-r1g0.001 0 10 --disc teacher --dlr 1e-3 --r1-gamma 0.001
# G evaluated lower (--gsigma: G(z) = D(s z; s)); SiD's sigma_init 2.5 (github.com/mingyuanzhou/SiD run_sid.sh).
# The kimg-0 FID of each run is the teacher's raw one-step output at that sigma
probe gs2.5 0 40 --gsigma 2.5 & probe gs2.5 1 40 --gsigma 2.5 & wait
# The teacher's raw one-step output D(s z; s) (sample.py --raw --sigma), the 500 seeds of every FID here -> raw-sigma.txt
for s in 80 5 2.5 1; do echo "D(${s}z; $s): $(fid_of assets/toy-edm.pt --raw --sigma $s)"; done > $out/raw-sigma.txt
# --gsigma 2.5's curves beside the preset's first 40 kimg (long-base-s0 in fid-curve.csv) -> fid-curve-gsigma.csv/png
# (from the runs' metrics.jsonl, as their training states are not kept; their FID at 0 kimg, 179.83, was kept only
# in those states, as metrics.jsonl did not hold the start's FID then, so it is written here)
python -c "
import csv, ckpt, fid
rows = [(r['run'], float(r['kimg']), float(r['fid'])) for r in csv.DictReader(open('$out/fid-curve.csv'))
        if r['run'] == 'long-base-s0' and float(r['kimg']) <= 40]
for run in ('gs2.5-s0', 'gs2.5-s1'):
    rows += [(run, 0, 179.83)] + [(run, k, v) for k, v in ckpt.read_fids('$out/' + run)]
ckpt.atomic_text('$out/fid-curve-gsigma.csv', 'run,kimg,fid\n' + ''.join(f'{r},{k:g},{v:.2f}\n' for r, k, v in rows))
curves = {run: tuple(zip(*[(k, v) for r, k, v in rows if r == run])) for run in dict.fromkeys(r for r, _, _ in rows)}
fid.plot_lines(curves, '$out/fid-curve-gsigma.png', 'kimg ->', 'FID')"
# D2O-F at 3x the G lr (its trainable 17 % are norms, affines, 1x1 skips, qkv and the in/out convs), 2026-12-03 on a
# slower host (this host's preset probe: 222.21 at 5 kimg vs 211.20 elsewhere, so not bit-comparable with the rows above);
# FID every 10 kimg. D2O-F at the preset's lr beside it. The preset's probe to 5 kimg is the host check.
probe d2o-f 0 10 --freeze 1 --fid-every 10 & probe d2o-f-lr3e-4 0 10 --freeze 1 --lr 3e-4 --fid-every 10 & wait
probe d2o-f-lr3e-4 0 40 --freeze 1 --lr 3e-4 --fid-every 10 & probe d2o-f-lr3e-4 1 10 --freeze 1 --lr 3e-4 --fid-every 10 & wait
probe hostcheck 0 5
# 2026-12-03, second session on the same host (its D2O-F lr 3e-4 seed-1 probe repeats 189.45 at 10 kimg to the last
# digit): that seed to 40 kimg, and D2O itself (the preset) to 40 kimg on this host, for a same-host D2O-F / D2O ratio
probe d2o-f-lr3e-4 1 40 --freeze 1 --lr 3e-4 --fid-every 10 & probe d2o 0 40 --fid-every 10 & wait
# 2026-12-03, a third session on that host: D2O's second seed there (two seeds each side for the D2O-F / D2O ratio),
# and D2O-F at a G lr of 1e-3 (does the gain from 1e-4 to 3e-4 go on?)
probe d2o 1 40 --fid-every 10 & probe d2o-f-lr1e-3 0 40 --freeze 1 --lr 1e-3 --fid-every 10 & wait
# 2026-12-04, a fourth session on that host (a 1-kimg preset run gave the losses of hostcheck-s0 to the last digit):
# D2O-F at lr 1e-3's second seed, and at 3e-3
probe d2o-f-lr1e-3 1 40 --freeze 1 --lr 1e-3 --fid-every 10 & probe d2o-f-lr3e-3 0 40 --freeze 1 --lr 3e-3 --fid-every 10 & wait
# 2026-12-04, a fifth session on that host: D2O-F at G lr 1e-3 with 10x the R1 weight (at 0.1 its seed 1 ended with
# D winning, loss_D 0.17-0.27), both seeds
probe d2o-f-lr1e-3-r1g1 0 40 --freeze 1 --lr 1e-3 --r1-gamma 1 --fid-every 10 & probe d2o-f-lr1e-3-r1g1 1 40 --freeze 1 --lr 1e-3 --r1-gamma 1 --fid-every 10 & wait
# then D2O itself with that R1 weight (does gamma 1 help D2O too, or only D2O-F at its higher lr?), both seeds
probe d2o-r1g1 0 40 --r1-gamma 1 --fid-every 10 & probe d2o-r1g1 1 40 --r1-gamma 1 --fid-every 10 & wait
# 2026-12-04, a sixth session, on another host (37 s per kimg per run, not 70; its seed-0 losses at 1 kimg differ
# from d2o-r1g1-s0's): D2O at R1 gamma 1 to 200 kimg, both seeds, FID every 10 kimg to 40 and every 20 after
probe d2o-r1g1-200 0 40 --r1-gamma 1 --fid-every 10 & probe d2o-r1g1-200 1 40 --r1-gamma 1 --fid-every 10 & wait
probe d2o-r1g1-200 0 200 --r1-gamma 1 --fid-every 20 & probe d2o-r1g1-200 1 200 --r1-gamma 1 --fid-every 20 & wait
# 2026-12-04, after R1 gamma 1 became the ResNet D's default (the same host as d2o-r1g1-200), beside the toy table's
# rerun: does a yet higher R1 weight, or a 3x G lr held back by gamma 1 (as D2O-F's best), go further at 40 kimg?
# The lr probe was stopped at 20 kimg (behind gamma 1 at both seeds at 10 and 20 kimg, seed 1 rising), so it reads:
probe r1g3 0 40 --r1-gamma 3 --fid-every 10 & probe r1g3 1 40 --r1-gamma 3 --fid-every 10 &
probe r1g1-lr3e-4 0 20 --r1-gamma 1 --lr 3e-4 --fid-every 10 & probe r1g1-lr3e-4 1 20 --r1-gamma 1 --lr 3e-4 --fid-every 10 & wait
# 2026-12-04, a later session on the same host (a 1-kimg run at --r1-gamma 1 repeats d2o-r1g1-200-s0's losses to the
# last digit): R1 gamma 3 on to 200 kimg, both seeds, FID every 20 kimg, for its long curve beside gamma 1's
probe r1g3 0 200 --r1-gamma 3 --fid-every 20 & probe r1g3 1 200 --r1-gamma 3 --fid-every 20 & wait
# then the R1 interval (lazy R1 every 4 iterations instead of 16, at the preset's gamma 1; the weight per R1 step
# scales with the interval, so the regulariser's mean is the same, applied 4x as often)
probe r1i4 0 40 --r1-gamma 1 --r1-interval 4 --fid-every 10 & probe r1i4 1 40 --r1-gamma 1 --r1-interval 4 --fid-every 10 & wait
# the main command itself at gamma 3 (two threads, alone; 310.46 -> 149.33 here, against 151.36 at the preset's 1)
python train.py --r1-gamma 3 --batch 16 --kimg 20 --rundir runs/main-r1g3  # the main command of then
# 2026-12-04, a later session on the same host: the teacher's size. Teachers 2x and 1.33x narrower than the toy
# teacher (16 and 24 channels, 0.44M and 0.99M parameters, against 32 and 1.75M), pretrained as assets/toy-edm.pt was
# (README's command at --arch toy16 / toy24, 500 kimg, side by side), their FIDs (-> teacher-size.txt), then D2O
# from each at the preset's settings (seed 0 to 40 kimg, seed 1 to 20: the session's time; the four side by side):
# is D2O's distance from its teacher a matter of size?
teacher() {  # WIDTH KIMG THREADS -> $out/teacherWIDTH: the README's teacher command at --arch toyWIDTH
    mkdir -p $out/teacher$1
    OMP_NUM_THREADS=$3 python train.py --loss edm --data toy --init random --arch toy$1 --batch 128 --lr 1e-3 \
        --lr-rampup 20 --ema 50 --kimg $2 --tick 10 --snap 50 --fid-num 0 --rundir $out/teacher$1 >> $out/teacher$1/log.txt 2>&1
}
teacher_fids() {  # NAME NET: FID of NET's Heun 18 and 8 steps
    for steps in 18 8; do echo "$1 --steps $steps: $(fid_of $2 --steps $steps)"; done
}
teacher 16 500 1 & teacher 24 500 1 & wait  # (500 kimg at batch 128 ends at 500,096 images)
t16=$out/teacher16/network-snapshot-000500096.pt; t24=$out/teacher24/network-snapshot-000500096.pt
probe t16 0 40 --init $t16 --r1-gamma 1 --fid-every 10 & probe t24 0 40 --init $t24 --r1-gamma 1 --fid-every 10 &
probe t16 1 20 --init $t16 --r1-gamma 1 --fid-every 20 & probe t24 1 20 --init $t24 --r1-gamma 1 --fid-every 20 & wait
teacher_fids toy16 $t16 > $out/teacher-size.txt; teacher_fids toy24 $t24 >> $out/teacher-size.txt
# 2026-12-04, the next session (same host): the size that counts, 64 channels (6.99M parameters, 4x the toy teacher's).
# Its 500 kimg do not fit a session here (68 img/s on both threads), so it is pretrained to 300 kimg, alone on both
# threads; the 24-channel teacher at 300 kimg is its reference for the shorter pretraining. Then D2O from it at the
# preset's settings, two seeds side by side.
teacher 64 300 2
t64=$out/teacher64/network-snapshot-000300032.pt  # (300 kimg at batch 128 ends at 300,032 images)
teacher_fids toy64-300kimg $t64 >> $out/teacher-size.txt
teacher_fids toy24-300kimg $out/teacher24/network-snapshot-000300032.pt >> $out/teacher-size.txt  # (run beside it)
# is D2O's student moved by the teacher's pretraining length? D2O from the 24-channel teacher at 300 kimg, seed 0
# (beside the 64-channel teacher's pretraining)
probe t24-300 0 20 --init $out/teacher24/network-snapshot-000300032.pt --r1-gamma 1 --fid-every 10
probe t64 0 20 --init $t64 --r1-gamma 1 --fid-every 10 & probe t64 1 20 --init $t64 --r1-gamma 1 --fid-every 10 & wait
probe t64 0 30 --init $t64 --r1-gamma 1 --fid-every 10 & probe t64 1 30 --init $t64 --r1-gamma 1 --fid-every 10 & wait
probe t64 0 40 --init $t64 --r1-gamma 1 --fid-every 10 & probe t64 1 40 --init $t64 --r1-gamma 1 --fid-every 10 & wait
# 2026-12-05 (the same host: a 1-kimg preset run repeats d2o-r1g1-200-s0's losses to the last digit). Both learning
# rates doubled (their ratio kept): is the GAN held by its step size?
probe lr2x 0 40 --r1-gamma 1 --lr 2e-4 --dlr 4e-3 --fid-every 10 & probe lr2x 1 40 --r1-gamma 1 --lr 2e-4 --dlr 4e-3 --fid-every 10 & wait
# G at sigma 2.5 (its raw output 179.8 at 0 kimg) with G's lr warmed up over 5 kimg, at the present R1 weight: does the
# head start survive the first kimg?
f="--gsigma 2.5 --r1-gamma 1 --lr-rampup 5"
probe gs2.5-ru5 0 10 $f & probe gs2.5-ru5 1 10 $f & wait
probe gs2.5-ru5 0 40 $f --fid-every 10 & probe gs2.5-ru5 1 40 $f --fid-every 10 & wait
probe gs2.5-ru5 0 60 $f --fid-every 10 & probe gs2.5-ru5 1 60 $f --fid-every 10 & wait  # (after b64-lr2x)
# batch 64 at equal images: 4x fewer iterations, at lr2x's rates and R1 every 4 iterations (R1's weight per image kept)
f="--r1-gamma 1 --batch 64 --lr 2e-4 --dlr 4e-3 --r1-interval 4 --fid-every 10"
probe b64-lr2x 0 40 $f & probe b64-lr2x 1 40 $f & wait
# both rates 4x: where does the step size start to matter?
f="--r1-gamma 1 --lr 4e-4 --dlr 8e-3 --fid-every 10"
probe lr4x 0 40 $f & probe lr4x 1 40 $f & wait
probe lr4x 0 60 $f & probe lr4x 1 60 $f & wait  # (after the toy table's runs beside it)
# the same with G's lr warmed up over 5 kimg: is the 4x rates' slow first 10 kimg a too-large first step?
f="--r1-gamma 1 --lr 4e-4 --dlr 8e-3 --lr-rampup 5 --fid-every 10"
probe lr4x-ru5 0 40 $f & probe lr4x-ru5 1 40 $f & wait
# 2026-12-05, a new session: lr4x on to 200 kimg, FID every 20 kimg after 60 (as d2o-r1g1-200), for its long curve
# (it ran from scratch, the states above not kept: its 10-60 kimg points repeat those runs to the last digit)
f="--r1-gamma 1 --lr 4e-4 --dlr 8e-3 --fid-every 20"
probe lr4x 0 200 $f & probe lr4x 1 200 $f & wait
# 2026-12-05, a later session on that host: lr4x with R1 weight 3 (does a stronger R1 keep the 4x rates stable past
# 80 kimg?), FID every 10 kimg to 100 and every 20 after
f="--r1-gamma 3 --lr 4e-4 --dlr 8e-3"
probe lr4x-r1g3 0 100 $f --fid-every 10 & probe lr4x-r1g3 1 100 $f --fid-every 10 & wait
probe lr4x-r1g3 0 200 $f --fid-every 20 & probe lr4x-r1g3 1 200 $f --fid-every 20 & wait
# the same rates switched on after 20 kimg of the preset (a resume takes new --lr, --dlr, --r1-gamma): does it keep
# the preset's start and 4x's pace from 30 kimg? (its options.json holds the rates of the second part)
probe sw20 0 20 --r1-gamma 1 --fid-every 10 & probe sw20 1 20 --r1-gamma 1 --fid-every 10 & wait
probe sw20 0 40 $f --fid-every 10 & probe sw20 1 40 $f --fid-every 10 & wait
# 2026-12-05, a third session on that host (a 1-kimg lr4x run repeated its losses to the last digit): the present preset
# (R1 gamma 1) at 2 D steps per G step, and at batch 8 and 4 at equal images (2x and 4x the iterations; the rates and
# R1 interval of the preset), FID every 10 kimg
f="--r1-gamma 1 --fid-every 10"
probe ds2 0 40 $f --d-steps 2 & probe ds2 1 40 $f --d-steps 2 & wait
probe b8 0 40 $f --batch 8 & probe b8 1 40 $f --batch 8 & wait
probe b8 0 60 $f --batch 8 & probe b8 1 60 $f --batch 8 & wait
probe b4 0 40 $f --batch 4 & probe b4 1 40 $f --batch 4 & wait
probe b8 0 100 --r1-gamma 1 --fid-every 20 --batch 8 & probe b8 1 100 --r1-gamma 1 --fid-every 20 --batch 8 & wait # b8 on, FID every 20 kimg
# 2026-12-05, the next session on that host (a 1-kimg lr4x run repeated its losses to the last digit): batch 8, now the
# preset, on to 200 kimg from its kept states, for the preset's long curve beside batch 16's and lr4x-r1g3's
probe b8 0 200 --r1-gamma 1 --fid-every 20 --batch 8 & probe b8 1 200 --r1-gamma 1 --fid-every 20 --batch 8 & wait
# 2026-12-06, the next session on that host (a 1-kimg lr4x run repeated its losses to the last digit): D2O-F at batch 8
# (the preset now) with the G lr that matched D2O at batch 16 (1e-3), and 3e-4
f="--r1-gamma 1 --fid-every 10 --batch 8"
probe b8-f-lr1e-3 0 40 $f --freeze 1 --lr 1e-3 & probe b8-f-lr1e-3 1 40 $f --freeze 1 --lr 1e-3 & wait
probe b8-f-lr3e-4 0 40 $f --freeze 1 --lr 3e-4 & probe b8-f-lr3e-4 1 40 $f --freeze 1 --lr 3e-4 & wait
f="--r1-gamma 1 --fid-every 20 --batch 8"  # lr 3e-4 on to 100 kimg, FID where b8 has it
probe b8-f-lr3e-4 0 100 $f --freeze 1 --lr 3e-4 & probe b8-f-lr3e-4 1 100 $f --freeze 1 --lr 3e-4 & wait
# 2026-12-06, the next session on that host (a 1-kimg lr4x run repeated its losses to the last digit): both lrs 2x at
# batch 8 (the preset), the rates that were level at batch 16; D2O-F at batch 8 with a G lr between 3e-4 and 1e-3
f="--r1-gamma 1 --fid-every 10 --batch 8"
probe b8-lr2x 0 40 $f --lr 2e-4 --dlr 4e-3 & probe b8-lr2x 1 40 $f --lr 2e-4 --dlr 4e-3 & wait
probe b8-f-lr5e-4 0 40 $f --freeze 1 --lr 5e-4 & probe b8-f-lr5e-4 1 40 $f --freeze 1 --lr 5e-4 & wait
f="--r1-gamma 1 --fid-every 20 --batch 8"  # lr 5e-4 on to 100 kimg, FID where b8 has it
probe b8-f-lr5e-4 0 100 $f --freeze 1 --lr 5e-4 & probe b8-f-lr5e-4 1 100 $f --freeze 1 --lr 5e-4 & wait
probe b8-lr2x 0 100 $f --lr 2e-4 --dlr 4e-3 & probe b8-lr2x 1 100 $f --lr 2e-4 --dlr 4e-3 & wait  # lr2x on, likewise
# 2026-12-06, a later session on that host (the 1-kimg lr4x run's losses again to the last digit): at batch 8 the
# 4x rates with R1 gamma 3 (the lowest 200-kimg mean at batch 16), and R1 gamma 3 alone (the latter one seed at a time,
# beside toy_table.py's D2O-F 5e-4 row)
f="--r1-gamma 1 --fid-every 10 --batch 8"
probe b8-lr4x-r1g3 0 40 $f --lr 4e-4 --dlr 8e-3 --r1-gamma 3 & probe b8-lr4x-r1g3 1 40 $f --lr 4e-4 --dlr 8e-3 --r1-gamma 3 & wait
probe b8-r1g3 0 40 $f --r1-gamma 3; probe b8-r1g3 1 40 $f --r1-gamma 3
probe b8-dd2 0 40 $f --ddepth 2 & probe b8-dd2 1 40 $f --ddepth 2 & wait  # D depth: 2 residual blocks per resolution
# 2026-12-06, the next session on that host (the 1-kimg lr4x run's losses again to the last digit): RpGAN's relativistic
# pairing loss with R2 beside R1 (--gan rp, R3GAN) at the preset's rates and R1 weight
probe b8-rp 0 40 $f --gan rp & probe b8-rp 1 40 $f --gan rp & wait
# A diagnostic, not a method: D started from b8-s1's D at 200 kimg (--dinit), G from the teacher as always
probe b8-dinit 0 40 $f --dinit $out/b8-s1/disc-snapshot-000200000.pt & probe b8-dinit 1 40 $f --dinit $out/b8-s1/disc-snapshot-000200000.pt & wait
probe b8-dinit40 0 40 $f --dinit $out/b8-s1/disc-snapshot-000040000.pt & probe b8-dinit40 1 40 $f --dinit $out/b8-s1/disc-snapshot-000040000.pt & wait  # its D at 40 kimg
probe b8-dinit-d0 0 40 $f --dinit $out/b8-s0/disc-snapshot-000200000.pt & probe b8-dinit-d0 1 40 $f --dinit $out/b8-s0/disc-snapshot-000200000.pt & wait  # the other seed's D
# A D whose trunk first learnt to classify the toy world's real images (shape, shape colour, background; a 20-way head in
# place of its output, then dropped; disc.py --pretrain, ~10 min for 200 kimg), then all of it trains as D (--dinit).
# (These ran as capacity.py pretrain-d, which became disc.py --pretrain on 2026-12-06: the same file byte for byte.)
mkdir -p $out/dcls; python disc.py --pretrain 200 --data toy --dest $out/dcls/disc-cls-200.pt > $out/dcls/log-200.txt
probe b8-dcls 0 40 $f --dinit $out/dcls/disc-cls-200.pt & probe b8-dcls 1 40 $f --dinit $out/dcls/disc-cls-200.pt & wait
# the same classifier to 500 kimg (shape accuracy 0.952 against 0.874; one thread, ~51 min beside other runs)
OMP_NUM_THREADS=1 python disc.py --pretrain 500 --data toy --dest $out/dcls/disc-cls-500.pt > $out/dcls/log-500.txt
probe b8-dcls500 0 40 $f --dinit $out/dcls/disc-cls-500.pt & probe b8-dcls500 1 40 $f --dinit $out/dcls/disc-cls-500.pt & wait
# that D became the toy preset's (2026-12-06): cp $out/dcls/disc-cls-500.pt assets/toy-disc.pt. D2O-F at 5x the G lr with
# it, seed 1 (seed 0 is the first table's D2O-F row at 5e-4, the same command: python toy_table.py, the README)
probe b8-dcls500-f-lr5e-4 1 40 $f --dinit $out/dcls/disc-cls-500.pt --freeze 1 --lr 5e-4
# 2026-12-06, the next session on that host (the 1-kimg lr4x check's losses again to the last digit): the adopted
# preset's curve on to 200 kimg, b8-dcls500 resumed from its 40-kimg states (FID every 10 kimg as before)
probe b8-dcls500 0 200 $f --dinit $out/dcls/disc-cls-500.pt & probe b8-dcls500 1 200 $f --dinit $out/dcls/disc-cls-500.pt & wait
# 2026-12-06, the session after (the same host): the classification to 1000 kimg (two threads, alone, 48 min; shape
# accuracy 0.987 against 0.952 at 500), then D2O from it at two seeds
python disc.py --pretrain 1000 --data toy --dest $out/dcls/disc-cls-1000.pt > $out/dcls/log-1000.txt
probe b8-dcls1000 0 40 $f --dinit $out/dcls/disc-cls-1000.pt & probe b8-dcls1000 1 40 $f --dinit $out/dcls/disc-cls-1000.pt & wait
# on to 80 kimg, resumed from their 40-kimg states (the same session)
probe b8-dcls1000 0 80 $f --dinit $out/dcls/disc-cls-1000.pt & probe b8-dcls1000 1 80 $f --dinit $out/dcls/disc-cls-1000.pt & wait
# that D became the toy preset's (late 2026-12-06, the next session): cp $out/dcls/disc-cls-1000.pt assets/toy-disc.pt;
# then D2O-F at 5x the G lr with it, seed 1 (seed 0 is the first table's row, the same command), beside the table's last run
probe b8-dcls1000-f-lr5e-4 1 40 $f --dinit $out/dcls/disc-cls-1000.pt --freeze 1 --lr 5e-4
# and the preset's two seeds on to 120 kimg, resumed from their 80-kimg states (the same session)
probe b8-dcls1000 0 120 $f --dinit $out/dcls/disc-cls-1000.pt & probe b8-dcls1000 1 120 $f --dinit $out/dcls/disc-cls-1000.pt & wait
# and on to 200 kimg, resumed from their 120-kimg states (2026-12-07; a resume needs the --dinit path it started with)
probe b8-dcls1000 0 200 $f --dinit $out/dcls/disc-cls-1000.pt & probe b8-dcls1000 1 200 $f --dinit $out/dcls/disc-cls-1000.pt & wait
# the preset with G's lr 2x (D's kept), and with D's lr halved (G's kept), two seeds each (2026-12-07)
probe b8-dcls1000-lr2e-4 0 40 $f --dinit $out/dcls/disc-cls-1000.pt --lr 2e-4 & probe b8-dcls1000-lr2e-4 1 40 $f --dinit $out/dcls/disc-cls-1000.pt --lr 2e-4 & wait
probe b8-dcls1000-dlr1e-3 0 40 $f --dinit $out/dcls/disc-cls-1000.pt --dlr 1e-3 & probe b8-dcls1000-dlr1e-3 1 40 $f --dinit $out/dcls/disc-cls-1000.pt --dlr 1e-3 & wait
# D2O-F at 3x the G lr with the preset's D, seed 1 (seed 0 is the first table's row, the same command), alone
probe b8-dcls1000-f-lr3e-4 1 40 $f --dinit $out/dcls/disc-cls-1000.pt --freeze 1 --lr 3e-4
# EMA at the main command's end (2026-12-07): FID of G itself from the main command's training state at its 14 kimg
# (in-loop G_ema 120.10; it ran as `python train.py --rundir /tmp/main1000`, the line below's run) -> ema-vs-g.txt
python train.py --rundir $out/main14-ema > $out/main14-ema.log 2>&1
fid_of_g $out/main14-ema 000014000 >> $out/ema-vs-g.txt
# the classification on to 2000 kimg (2026-12-07; two threads, alone, 91 min; shape accuracy 0.998 against 0.987 at
# 1000, whose lines it repeats to the digit up to there), then D2O from it at two seeds
python disc.py --pretrain 2000 --data toy --dest $out/dcls/disc-cls-2000.pt > $out/dcls/log-2000.txt
probe b8-dcls2000 0 40 $f --dinit $out/dcls/disc-cls-2000.pt & probe b8-dcls2000 1 40 $f --dinit $out/dcls/disc-cls-2000.pt & wait
# the 2000-kimg D became the preset's (2026-12-07): cp $out/dcls/disc-cls-2000.pt assets/toy-disc.pt. D2O-F at 5x the G
# lr with it, seed 1 (seed 0 is the first table's row, the same command), beside the table's runs
probe b8-dcls2000-f-lr5e-4 1 40 $f --dinit $out/dcls/disc-cls-2000.pt --freeze 1 --lr 5e-4
# and at 3x the G lr, seed 1 (seed 0 is the table's 3x row), beside the test suite
probe b8-dcls2000-f-lr3e-4 1 40 $f --dinit $out/dcls/disc-cls-2000.pt --freeze 1 --lr 3e-4
# the preset's curve on to 200 kimg (2026-12-07, a session later, the same host): b8-dcls2000 resumed from its 40-kimg
# states, both seeds at once (FID every 10 kimg as before)
probe b8-dcls2000 0 200 $f --dinit $out/dcls/disc-cls-2000.pt & probe b8-dcls2000 1 200 $f --dinit $out/dcls/disc-cls-2000.pt & wait
# R1's weight with the 2000-kimg classifier D (2026-12-07, another host: an Intel Xeon, where the 1-kimg lr4x check
# gives loss_G 0.7675175808724903): gamma 3, started with --kimg 20 and stopped at 10, both seeds behind both of the
# preset's there; then gamma 0.3
probe b8-dcls2000-r1g3 0 10 $f --dinit $out/dcls/disc-cls-2000.pt --r1-gamma 3 & probe b8-dcls2000-r1g3 1 10 $f --dinit $out/dcls/disc-cls-2000.pt --r1-gamma 3 & wait
probe b8-dcls2000-r1g0.3 0 20 $f --dinit $out/dcls/disc-cls-2000.pt --r1-gamma 0.3 & probe b8-dcls2000-r1g0.3 1 20 $f --dinit $out/dcls/disc-cls-2000.pt --r1-gamma 0.3 & wait
# batch 4 with that D (the same host), to 20 kimg
probe b4-dcls2000 0 20 $f --dinit $out/dcls/disc-cls-2000.pt --batch 4 & probe b4-dcls2000 1 20 $f --dinit $out/dcls/disc-cls-2000.pt --batch 4 & wait
# the preset's own command again on that host (b8-dcls2000's flags), to 20 kimg: the same-host reference of the three above
probe b8-dcls2000-xeon 0 20 $f --dinit $out/dcls/disc-cls-2000.pt & probe b8-dcls2000-xeon 1 20 $f --dinit $out/dcls/disc-cls-2000.pt & wait
# (2026-12-07, a session later, the same Intel host: its 1-kimg check repeats 0.7675175808724903) that reference
# resumed on to 40 kimg, the same-host two-seed spread at the table's budget
probe b8-dcls2000-xeon 0 40 $f --dinit $out/dcls/disc-cls-2000.pt & probe b8-dcls2000-xeon 1 40 $f --dinit $out/dcls/disc-cls-2000.pt & wait
# D's trunk (all but its output layer and label projection) at a tenth of D's lr (--dlr-trunk 0.1), its fresh head at
# D's lr: does keeping more of the classifier's features go faster? (Started with --kimg 20, stopped at 10: 289 / 305,
# G barely moved from the teacher's raw 310, against the preset's 115.7 / 128.3 there, so it reads 10.)
probe b8-dcls2000-trunk0.1 0 10 $f --dinit $out/dcls/disc-cls-2000.pt --dlr-trunk 0.1 & probe b8-dcls2000-trunk0.1 1 10 $f --dinit $out/dcls/disc-cls-2000.pt --dlr-trunk 0.1 & wait
# G's lr warmed up over the first 2 kimg (--lr-rampup 2): the fresh head on the classifier's trunk settles first
# (started with --kimg 20, stopped at 10: level with the preset there, 119.9 / 126.1)
probe b8-dcls2000-ru2 0 10 $f --dinit $out/dcls/disc-cls-2000.pt --lr-rampup 2 & probe b8-dcls2000-ru2 1 10 $f --dinit $out/dcls/disc-cls-2000.pt --lr-rampup 2 & wait
# D faster than the preset's: D's lr 2x, or two D steps per G step
probe b8-dcls2000-dlr4e-3 0 10 $f --dinit $out/dcls/disc-cls-2000.pt --dlr 4e-3 & probe b8-dcls2000-dlr4e-3 1 10 $f --dinit $out/dcls/disc-cls-2000.pt --dlr 4e-3 & wait
probe b8-dcls2000-ds2 0 10 $f --dinit $out/dcls/disc-cls-2000.pt --d-steps 2 & probe b8-dcls2000-ds2 1 10 $f --dinit $out/dcls/disc-cls-2000.pt --d-steps 2 & wait
# two D steps ahead at 10 kimg at both seeds: on to 40 kimg (resumed)
probe b8-dcls2000-ds2 0 40 $f --dinit $out/dcls/disc-cls-2000.pt --d-steps 2 & probe b8-dcls2000-ds2 1 40 $f --dinit $out/dcls/disc-cls-2000.pt --d-steps 2 & wait
# (2026-12-07, a session later, the same Intel host: the 1-kimg check repeats 0.7675175808724903) G's lr halved with
# the classifier D (--lr 5e-5; G's lr 2x and D's lr 1/2 and 2x were run before)
probe b8-dcls2000-lr5e-5 0 40 $f --dinit $out/dcls/disc-cls-2000.pt --lr 5e-5 & probe b8-dcls2000-lr5e-5 1 40 $f --dinit $out/dcls/disc-cls-2000.pt --lr 5e-5 & wait
# patch heads on the classifier's trunk (--dpatch 1: a logit per position at 8x8 and 4x4 beside the image's, as the
# projected D's heads), R1 at 0.1: its penalty sums the 81 logits' gradients (at 1 kimg, 21 at 0.1 against the
# preset's 27 at 1; at 1 it was 811 by iteration 16)
probe b8-dcls2000-patch 0 40 $f --dinit $out/dcls/disc-cls-2000.pt --dpatch 1 --r1-gamma 0.1 & probe b8-dcls2000-patch 1 40 $f --dinit $out/dcls/disc-cls-2000.pt --dpatch 1 --r1-gamma 0.1 & wait
# patch heads at a lower R1 weight, 0.03 (started to 20 kimg, then resumed on to 40, a session later to 60), and 0.01 (to 20)
probe b8-dcls2000-patch-r1g0.03 0 60 $f --dinit $out/dcls/disc-cls-2000.pt --dpatch 1 --r1-gamma 0.03 & probe b8-dcls2000-patch-r1g0.03 1 60 $f --dinit $out/dcls/disc-cls-2000.pt --dpatch 1 --r1-gamma 0.03 & wait
probe b8-dcls2000-patch-r1g0.01 0 20 $f --dinit $out/dcls/disc-cls-2000.pt --dpatch 1 --r1-gamma 0.01 & probe b8-dcls2000-patch-r1g0.01 1 20 $f --dinit $out/dcls/disc-cls-2000.pt --dpatch 1 --r1-gamma 0.01 & wait
# lazy R1 four times as often (every 4 iterations; the weight per image kept) with the classifier D
probe b8-dcls2000-r1i4 0 40 $f --dinit $out/dcls/disc-cls-2000.pt --r1-interval 4 & probe b8-dcls2000-r1i4 1 40 $f --dinit $out/dcls/disc-cls-2000.pt --r1-interval 4 & wait
# At the main command's 16 kimg: the preset (seed 0: the main command's run; seed 1 rerun to 16 kimg) against the patch
# heads at R1 gamma 0.03, from the runs' 16-kimg snapshots -> at16kimg.txt
OMP_NUM_THREADS=1 python train.py --batch 8 --r1-gamma 1 --dinit $out/dcls/disc-cls-2000.pt --kimg 16 --seed 1 \
    --fid-every 10 --rundir $out/preset16-s1 > $out/preset16-s1.log 2>&1
{ echo "preset s0: $(fid_of runs/toy-d2o/network-snapshot-000016000.pt)"
  echo "preset s1: $(fid_of $out/preset16-s1/network-snapshot-000016000.pt)"
  for s in 0 1; do echo "patch-r1g0.03 s$s: $(fid_of $out/b8-dcls2000-patch-r1g0.03-s$s/network-snapshot-000016000.pt)"; done
} >> $out/at16kimg.txt
# G's Adam with momentum (--beta1; D2O's is 0) with the classifier D: 0.9 (started to 40 kimg, stopped at 10) and 0.5
probe b8-dcls2000-beta0.9 0 10 $f --dinit $out/dcls/disc-cls-2000.pt --beta1 0.9 & probe b8-dcls2000-beta0.9 1 10 $f --dinit $out/dcls/disc-cls-2000.pt --beta1 0.9 & wait
probe b8-dcls2000-beta0.5 0 40 $f --dinit $out/dcls/disc-cls-2000.pt --beta1 0.5 & probe b8-dcls2000-beta0.5 1 40 $f --dinit $out/dcls/disc-cls-2000.pt --beta1 0.5 & wait
# G's lr 2x (2e-4) for the first 10 kimg, then the preset's 1e-4 (a resume with --lr, so options.json holds 1e-4);
# started to 40 kimg, stopped at 20 (seed 0 had collapsed)
n=b8-dcls2000-lr2e-4to10
(probe $n 0 10 $f --dinit $out/dcls/disc-cls-2000.pt --lr 2e-4 && probe $n 0 20 $f --dinit $out/dcls/disc-cls-2000.pt --lr 1e-4) &
(probe $n 1 10 $f --dinit $out/dcls/disc-cls-2000.pt --lr 2e-4 && probe $n 1 20 $f --dinit $out/dcls/disc-cls-2000.pt --lr 1e-4) & wait
# (2026-12-08, the same Intel host: the 1-kimg check repeats 0.7675175808724903) the first D step on the G step's own
# fakes (--d-fakes g-step: one G forward fewer per iteration) with the classifier D
probe b8-dcls2000-gfakes 0 40 $f --dinit $out/dcls/disc-cls-2000.pt --d-fakes g-step & probe b8-dcls2000-gfakes 1 40 $f --dinit $out/dcls/disc-cls-2000.pt --d-fakes g-step & wait
for s in 0 1; do echo "gfakes s$s: $(fid_of $out/b8-dcls2000-gfakes-s$s/network-snapshot-000016000.pt)"; done >> $out/at16kimg.txt
# D2O-F at 5x its G lr with it (the table's 5x row's flags plus --d-fakes g-step)
probe b8-dcls2000-gfakes-f-lr5e-4 0 40 $f --dinit $out/dcls/disc-cls-2000.pt --d-fakes g-step --freeze 1 --lr 5e-4 & probe b8-dcls2000-gfakes-f-lr5e-4 1 40 $f --dinit $out/dcls/disc-cls-2000.pt --d-fakes g-step --freeze 1 --lr 5e-4 & wait
# study.md from every run's records, and a curve per setting (its seeds' mean; each seed in the CSV)
python toy_table.py --study $out
python toy_table.py --study $out --plot fid-curve-d2o-f \
    --curves d2o,d2o-r1g1,d2o-f-lr3e-4,d2o-f-lr1e-3,d2o-f-lr1e-3-r1g1,d2o-f-lr3e-3
python toy_table.py --study $out --plot fid-curve-r1g1-200 --curves d2o,d2o-r1g1,d2o-r1g1-200,r1g3
python toy_table.py --study $out --plot fid-curve-rates --curves d2o-r1g1-200,lr4x-s0,lr4x-s1,lr4x-r1g3,lr2x,gs2.5-ru5,b64-lr2x
python toy_table.py --study $out --plot fid-curve-batch --curves d2o-r1g1-200,b4,b8,b64-lr2x,ds2 --upto 100
python toy_table.py --study $out --plot fid-curve-b8-200 --curves d2o-r1g1-200,b8,lr4x-r1g3,b8-lr2x
python toy_table.py --study $out --plot fid-curve-d2o-f-b8 --curves b8,b8-f-lr3e-4,b8-f-lr5e-4,b8-f-lr1e-3 --upto 100
python toy_table.py --study $out --plot fid-curve-dinit --curves b8,b8-dinit,b8-dinit-d0,b8-dinit40,b8-rp,b8-dcls,b8-dcls500 --upto 100
python toy_table.py --study $out --plot fid-curve-dcls --curves b8,b8-dcls500,b8-f-lr5e-4,b8-dcls500-f-lr5e-4 --upto 40
python toy_table.py --study $out --plot fid-curve-dcls-200 --curves b8,b8-dcls500
python toy_table.py --study $out --plot fid-curve-dcls1000 --curves b8,b8-dcls,b8-dcls500,b8-dcls1000
python toy_table.py --study $out --plot fid-curve-dcls2000 --curves b8,b8-dcls,b8-dcls500,b8-dcls1000,b8-dcls2000 --upto 40
python toy_table.py --study $out --plot fid-curve-dcls2000-200 --curves b8,b8-dcls500,b8-dcls1000,b8-dcls2000
python toy_table.py --study $out --plot fid-curve-ds2-xeon --curves b8-dcls2000-xeon,b8-dcls2000-ds2 --upto 40
python toy_table.py --study $out --plot fid-curve-patch-xeon --curves b8-dcls2000-xeon,b8-dcls2000-patch,b8-dcls2000-patch-r1g0.03,b8-dcls2000-patch-r1g0.01,b8-dcls2000-lr5e-5 --upto 40
python toy_table.py --study $out --plot fid-curve-beta-xeon --curves b8-dcls2000-xeon,b8-dcls2000-beta0.5,b8-dcls2000-beta0.9,b8-dcls2000-lr2e-4to10-s0,b8-dcls2000-lr2e-4to10-s1 --upto 40
python toy_table.py --study $out --plot fid-curve-gfakes-xeon --curves b8-dcls2000-xeon,b8-dcls2000-gfakes --upto 40
