#!/usr/bin/env bash
# ResNet-8 on Fashion-MNIST with the validation pace (issue 17). Ran from a checkout of a421f16
# with 1 BLAS thread on a 2-core AMD EPYC shared with other jobs: 53 min 55 s wall (GNU time),
# largest process 1.14 GiB. Resumable: rerun the same command to continue.
export OPENBLAS_NUM_THREADS=1
minievo evolve --preset paper-mnist-paced --model resnet8 --dataset fashion-mnist \
  --limit-train 20000 --val-fraction 0.1 --generations 20 --ancestor-epochs 8 \
  --offspring-epochs 2 --lr 0.05 --out runs/resnet8-fashion --no-progress
