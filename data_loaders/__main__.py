"""``python -m data_loaders fetch NAME [--data-dir D] [--cache-dir C]`` and ``... info``."""

from __future__ import annotations

import argparse
import sys

from . import DATASETS, DataError, cache_root, fetch_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_loaders",
                                     description="Fetch and inspect minievo's data sets.")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="fill the cache for a data set, verified")
    fetch.add_argument("name", help=f"one of: {', '.join(DATASETS)}")
    fetch.add_argument("--data-dir", default=None,
                       help="a folder that already holds the data set's files")
    fetch.add_argument("--cache-dir", default=None,
                       help="cache folder (default: $MINIEVO_DATA or ~/.cache/minievo)")
    sub.add_parser("info", help="list the data sets and the cache folder")
    args = parser.parse_args(argv)

    if args.command == "info":
        print(f"cache: {cache_root()}")
        for info in DATASETS.values():
            print(f"{info.name:17s} {info.shape} {info.n_classes} classes, "
                  f"{info.n_train}+{info.n_test} samples, mean {info.mean} std {info.std}")
        return 0
    try:
        path = fetch_dataset(args.name, data_dir=args.data_dir, cache_dir=args.cache_dir)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if path is not None:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
