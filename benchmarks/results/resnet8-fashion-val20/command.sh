#!/usr/bin/env bash
# The ancestor of benchmarks/results/resnet8-fashion-r3 (issue 17): ResNet-8 trained 6 epochs on
# 24,000 Fashion-MNIST images, 6,000 more held out for validation (val_fraction 0.2 of the
# first 30,000). Ran from a checkout of e18acaa with 1 BLAS thread on a 2-core AMD EPYC shared
# with a three-seed sweep and other jobs: generation 0 took 31 min 48 s of training (1,908 s,
# lineage.json). The run was then stopped during generation 1 and its lineage restarted from
# this generation 0 with --pace-reference 3 (resnet8-fashion-r3/command.sh), since a single
# undertrained generation 0 (86.07% validation, 85.31% test) is a poor reference for the pace.
export OPENBLAS_NUM_THREADS=1
minievo evolve --preset paper-mnist-paced --model resnet8 --dataset fashion-mnist \
  --limit-train 30000 --val-fraction 0.2 --pace-margin 0.01 --generations 12 \
  --ancestor-epochs 6 --offspring-epochs 2 --lr 0.05 \
  --out benchmarks/results/resnet8-fashion-val20 --no-progress
