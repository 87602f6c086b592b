"""Copy one generation of a finished lineage into a small committed file for the GPU check.

A lineage's ``gen_GGG/model.npz`` files are not committed (a folder's ``.gitignore`` keeps them
out: they are large and rebuilt by rerunning). The GPU check's ``resnet-compact`` step needs
one real evolved network, so this writes the chosen generation's weights and masks to a
checkpoint whose metadata names its model, generation, source folder and input shape:

    python3 benchmarks/export_evolved.py benchmarks/results/resnet8-fashion-r3 7 \\
        benchmarks/results/resnet8-fashion-r3/evolved_resnet8.npz

The generation is the reader's choice (on validation: the run's ``summary.md`` lists the
operating points of both selection rules).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from minievo import checkpoint, models


def export(run: Path, generation: int, out: Path) -> dict:
    """Write generation ``generation`` of ``run`` to ``out``; returns the metadata written."""
    config = json.loads((run / "config.json").read_text())["config"]
    name = config["model"]
    import data_loaders as dl

    data_shape = dl.DATASETS[dl.dataset_name(config["dataset"])].shape
    shape = models.input_shape_for(name, data_shape)
    model = models.build(name, shape if name in models.ANY_INPUT else None)
    arrays, _ = checkpoint.load(run / f"gen_{generation:03d}" / "model.npz",
                                expected={k: v.shape for k, v in model.state_dict().items()})
    model.load_state_dict(arrays)  # refuses arrays that do not fit the model
    meta = {"model": name, "generation": generation, "source": str(run),
            "dataset": config["dataset"], "input_shape": list(shape)}
    checkpoint.save(out, model.state_dict(), meta)
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a finished minievo evolve folder")
    ap.add_argument("generation", type=int)
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    try:
        meta = export(args.run, args.generation, args.out)
    except (OSError, KeyError, ValueError, checkpoint.CheckpointError) as exc:
        print(f"export_evolved.py: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
