#!/usr/bin/env bash
# ResNet-8 on Fashion-MNIST with the validation pace (issue 17): from the generation 0 of
# benchmarks/results/resnet8-fashion-val20 (run that first: networks are not committed), margin
# 1 point against the mean validation accuracy of generations 0-2 (--pace-reference 3), 2
# epochs per offspring, 24,000 training and 6,000 validation images. Ran from the working
# tree of commit e18acaa plus the uncommitted report/hardening work that landed in 1af4ce1,
# with 1 BLAS thread on a 2-core AMD EPYC shared with a three-seed sweep (3 processes) and
# test runs: 1 h 3 min 46 s wall (GNU time), largest process 1.18 GiB. Resumable: rerun.
export OPENBLAS_NUM_THREADS=1
minievo evolve --preset paper-mnist-paced --model resnet8 --dataset fashion-mnist \
  --limit-train 30000 --val-fraction 0.2 --pace-margin 0.01 --pace-reference 3 \
  --generations 12 --offspring-epochs 2 --lr 0.05 \
  --ancestor-path benchmarks/results/resnet8-fashion-val20/gen_000/model.npz \
  --out benchmarks/results/resnet8-fashion-r3 --no-progress
# the network the GPU check compacts (benchmarks/gpu_check.py resnet-compact):
python3 benchmarks/export_evolved.py benchmarks/results/resnet8-fashion-r3 7 \
  benchmarks/results/resnet8-fashion-r3/evolved_resnet8.npz
# compact forward against masked dense, one thread and two:
python3 benchmarks/sparse_forward.py --model-checkpoint \
  benchmarks/results/resnet8-fashion-r3/evolved_resnet8.npz --model resnet8 --batch 64 \
  --repeats 5 --skip conv,lenet > benchmarks/results/resnet8-fashion-r3/compact_forward.txt
# recovery training of generations 6 and 7 (issue 20's first lever): 7 min 55 s wall
minievo recover benchmarks/results/resnet8-fashion-r3 --generations 6,7 --epochs 2 --no-progress
