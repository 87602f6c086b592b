"""Reading the JSON records of a run as untrusted input: ``lineage.json``, ``sweep.json`` and
sweep grid files.

``minievo report`` and ``minievo sweep`` read what a run left on disk, and a folder can be
copied from elsewhere, edited by hand or tampered with. Every record goes through the same
checks as a checkpoint, each failure a one-line :class:`RecordError` naming the file and the
field:

- the path must be a regular file (a FIFO, a device such as ``/dev/zero`` or a folder is
  refused without reading or blocking: it is opened with ``O_NONBLOCK`` and checked with
  ``fstat`` first), and no more than a stated number of bytes is ever read;
- the text must be UTF-8 JSON with a bounded number of arrays and objects, nested no deeper
  than :data:`MAX_DEPTH`;
- a lineage record holds at most :data:`MAX_ROWS` rows, numbered 0, 1, 2, ..., each with the
  keys the tables and plots read, and every number finite and in the range its field allows
  (counts are integers in [0, 2**53), accuracies and densities in [0, 1], efficiencies > 0).
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

from minievo.checkpoint import CheckpointError

#: Most bytes read from a ``lineage.json`` (a 1,000-generation record is about 1.3 MB).
MAX_LINEAGE_BYTES = 8 << 20
#: Most bytes read from a ``sweep.json`` (1,000 settings of a dozen options is about 0.5 MB).
MAX_SWEEP_BYTES = 8 << 20
#: Most bytes read from a grid file given to ``minievo sweep --grid``.
MAX_GRID_BYTES = 1 << 20
#: Most rows (generations) of a lineage record.
MAX_ROWS = 10_000
#: Deepest nesting of arrays and objects in any record (a lineage record needs 3).
MAX_DEPTH = 32
#: Bound on every count in a row (synapses, clusters, MACs, images): the integers a float
#: holds exactly.
MAX_COUNT = 2**53

#: The keys every row must hold: what the tables, the plots and the sweep report read.
REQUIRED_KEYS = ("generation", "synapses", "test_accuracy", "synaptic_efficiency",
                 "cluster_efficiency_kernel", "cluster_efficiency_filter")
#: Integer counts, each in [0, MAX_COUNT).
COUNT_KEYS = frozenset({
    "synapses", "effective_synapses", "kernels", "filters", "neurons", "clusters_kernel",
    "clusters_filter", "effective_clusters_kernel", "effective_clusters_filter", "macs_dense",
    "macs", "macs_effective", "test_images", "val_images", "pace_tries", "offspring",
    "parameters"})
#: Fractions, each a number in [0, 1] (and every key starting with a FRACTION_PREFIXES entry).
FRACTION_KEYS = frozenset({
    "test_accuracy", "val_accuracy", "expected_retention", "sampled_retention", "pace_cut",
    "pace_next_cut", "parent_agreement"})
#: Per-layer fractions: ``density_<layer>``, and the per-layer pace's cuts and lost strength
#: (``pace_cut_<layer>``, ``pace_next_cut_<layer>``, ``pace_lost_<layer>``).
FRACTION_PREFIXES = ("density_", "pace_cut_", "pace_next_cut_", "pace_lost_")
#: Ratios against generation 0, each a number > 0 (and at most MAX_COUNT).
RATIO_KEYS = frozenset({
    "synaptic_efficiency", "effective_synaptic_efficiency", "cluster_efficiency_kernel",
    "cluster_efficiency_filter"})
#: Durations, each a number >= 0.
SECONDS_KEYS = frozenset({"train_seconds", "eval_seconds"})


class RecordError(CheckpointError, ValueError):
    """A record that cannot be read or does not hold what it must: one line naming the file
    and the field (``minievo`` prints it as ``minievo: error: ...``, exit status 2)."""


def _short(value) -> str:
    """``repr(value)`` cut to a length a one-line message can carry."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular_file(path, max_bytes: int, what: str = "file") -> int:
    """Check, without opening it, that ``path`` is a regular file of at most ``max_bytes``.

    For files handed to another reader (a checkpoint for :func:`minievo.checkpoint.load`):
    a FIFO or ``/dev/zero`` in their place is refused here instead of blocking or filling
    memory there. Symbolic links are followed.

    Args:
        path: the file.
        max_bytes: the largest size accepted.
        what: what the file is, for the message.

    Returns:
        Its size in bytes.

    Raises:
        RecordError: when it is missing, not a regular file, or larger than ``max_bytes``.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise RecordError(f"{path}: cannot read this {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise RecordError(f"{path}: this {what} is {_kind(st.st_mode)}, not a regular file")
    if st.st_size > max_bytes:
        raise RecordError(f"{path}: this {what} holds {st.st_size:,} bytes, more than the "
                          f"limit of {max_bytes:,}")
    return st.st_size


def read_bounded(path, max_bytes: int, what: str = "record") -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, never reading more than that.

    The file is opened with ``O_NONBLOCK`` (a FIFO without a writer does not block the open)
    and checked with ``fstat`` before anything is read; its size is checked again while
    reading, for files whose size the directory does not tell (``/proc``).

    Args:
        path: the file.
        max_bytes: the largest size accepted.
        what: what the file is, for the message.

    Returns:
        Its content, at most ``max_bytes`` bytes.

    Raises:
        RecordError: when it cannot be opened, is not a regular file, or is too large.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise RecordError(f"{path}: cannot read this {what} ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RecordError(f"{path}: this {what} is {_kind(st.st_mode)}, not a regular "
                              "file")
        if st.st_size > max_bytes:
            raise RecordError(f"{path}: this {what} holds {st.st_size:,} bytes, more than the "
                              f"limit of {max_bytes:,}")
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise RecordError(f"{path}: this {what} holds more than the limit of "
                              f"{max_bytes:,} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise RecordError(f"{path}: cannot read this {what} ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def _depth(value) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (a scalar: 0)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))
    return deepest


def parse_text(data: bytes, path, what: str = "record", toml: bool = False,
               max_containers: int | None = None):
    """Parse the bytes of a JSON (or TOML) record with its nesting bounded.

    Args:
        data: the file's bytes (already bounded by :func:`read_bounded`).
        path: the file, for messages.
        what: what the file is, for messages.
        toml: parse TOML instead of JSON.
        max_containers: most arrays and objects allowed (counted from the brackets before
            parsing, so that the parsed value's memory stays a small multiple of the file's
            size); None: no bound beyond the size.

    Returns:
        The parsed value.

    Raises:
        RecordError: when the bytes are not UTF-8, not valid JSON/TOML, hold too many or too
            deeply nested arrays and objects.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"{path}: this {what} is not UTF-8 text (byte {exc.start} is "
                          f"{data[exc.start:exc.start + 1]!r}; a binary file?)") from None
    if "\0" in text:
        raise RecordError(f"{path}: this {what} holds a NUL byte (a binary file?)")
    if max_containers is not None:
        containers = text.count("[") + text.count("{")
        if containers > max_containers:
            raise RecordError(f"{path}: this {what} holds {containers:,} arrays/objects, more "
                              f"than the limit of {max_containers:,}")
    lang = "TOML" if toml else "JSON"
    try:
        if toml:
            import tomllib

            value = tomllib.loads(text)
        else:
            value = json.loads(text)
    except RecursionError:
        raise RecordError(f"{path}: this {what} nests arrays/objects deeper than "
                          f"{MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, TOMLDecodeError, too many integer digits
        raise RecordError(f"{path}: this {what} is not valid {lang}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                          ) from None
    if _depth(value) > MAX_DEPTH:
        raise RecordError(f"{path}: this {what} nests arrays/objects deeper than {MAX_DEPTH} "
                          "levels")
    return value


def load_json(path, max_bytes: int, what: str = "record", max_containers: int | None = None):
    """:func:`read_bounded` then :func:`parse_text` (JSON): a record as a Python value."""
    return parse_text(read_bounded(path, max_bytes, what), path, what,
                      max_containers=max_containers)


# ----------------------------------------------------------------------------------------------
# the rows of a lineage
# ----------------------------------------------------------------------------------------------
def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_value(where: str, key: str, v) -> None:
    """One field of a row against the range its key allows."""
    def bad(allowed: str):
        raise RecordError(f"{where} field {key!r} is {_short(v)}, allowed: {allowed}")

    if key == "generation":
        if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_ROWS):
            bad(f"an integer in [0, {MAX_ROWS})")
    elif key in COUNT_KEYS:
        if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_COUNT):
            bad("an integer in [0, 2**53)")
    elif key in FRACTION_KEYS or key.startswith(FRACTION_PREFIXES):
        if not (_is_number(v) and 0 <= v <= 1):  # NaN fails both comparisons
            bad("a number in [0, 1]")
    elif key in RATIO_KEYS:
        if not (_is_number(v) and 0 < v <= MAX_COUNT):
            bad("a number > 0 (a ratio against generation 0)")
    elif key in SECONDS_KEYS:
        if not (_is_number(v) and 0 <= v < math.inf):
            bad("a number of seconds >= 0")
    else:  # a field this version does not know: any JSON value, its numbers finite
        stack = [v]
        while stack:
            item = stack.pop()
            if isinstance(item, float) and not math.isfinite(item):
                bad("finite numbers")
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) >= MAX_COUNT:
                bad("numbers below 2**53")
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)


def validate_rows(rows, path) -> list[dict]:
    """Check the rows of a lineage record; returns them unchanged.

    Args:
        rows: the record's ``rows``: a list of at most :data:`MAX_ROWS` objects, row ``g``
            with ``generation == g``, each holding :data:`REQUIRED_KEYS` and the
            ``density_<layer>`` keys of row 0, every field in its range.
        path: the record's file, for messages.

    Returns:
        ``rows``.

    Raises:
        RecordError: naming the file, the row and the field.
    """
    if not isinstance(rows, list):
        raise RecordError(f"{path}: 'rows' is {type(rows).__name__}, allowed: a list of "
                          "objects")
    if len(rows) > MAX_ROWS:
        raise RecordError(f"{path}: 'rows' has {len(rows):,} entries, more than the limit of "
                          f"{MAX_ROWS:,} generations")
    densities = None
    for i, r in enumerate(rows):
        where = f"{path}: row {i}"
        if not isinstance(r, dict):
            raise RecordError(f"{where} is {type(r).__name__}, allowed: an object")
        missing = [k for k in REQUIRED_KEYS if k not in r]
        if missing:
            raise RecordError(f"{where} lacks field(s) {', '.join(map(repr, missing))}")
        for key, v in r.items():
            if key == "effective_synaptic_efficiency" and v == math.inf \
                    and r.get("effective_synapses") == 0:
                continue  # a dead offspring (the literal model's collapse): no live path left
            _check_value(where, key, v)
        if r["generation"] != i:
            raise RecordError(f"{where} field 'generation' is {r['generation']}, allowed: {i} "
                              "(rows are generations 0, 1, 2, ... in order)")
        keys = {k for k in r if k.startswith("density_")}
        if densities is None:
            densities = keys
        elif keys != densities:
            odd = sorted(densities ^ keys)
            raise RecordError(f"{where} field(s) {', '.join(map(repr, odd))}: "
                              f"{'missing' if odd[0] in densities else 'not in row 0'} "
                              "(every row has the per-layer densities of row 0)")
    return rows


def read_lineage(path) -> list[dict]:
    """The checked rows of a ``lineage.json`` (see :func:`validate_rows`).

    Args:
        path: the record: a regular file of at most :data:`MAX_LINEAGE_BYTES` holding an
            object with a ``rows`` list.

    Returns:
        Its rows, one dict per generation (possibly none).

    Raises:
        RecordError: one line naming the file and what is wrong.
    """
    data = load_json(path, MAX_LINEAGE_BYTES, "lineage record", max_containers=4 * MAX_ROWS)
    if not isinstance(data, dict):
        raise RecordError(f"{path}: this lineage record is {type(data).__name__}, allowed: an "
                          "object with 'rows'")
    if "rows" not in data:
        raise RecordError(f"{path}: this lineage record lacks field 'rows'")
    return validate_rows(data["rows"], path)


def read_sweep(path) -> dict:
    """The ``spec`` of a ``sweep.json``, its shape checked (the options themselves are
    checked by :func:`minievo.evolution.sweep.make_spec`).

    Args:
        path: the record: a regular file of at most :data:`MAX_SWEEP_BYTES` holding
            ``{"kind": "sweep", "spec": {"preset", "seeds", "base", "settings"}}``.

    Returns:
        The spec dict.

    Raises:
        RecordError: one line naming the file and the field.
    """
    data = load_json(path, MAX_SWEEP_BYTES, "sweep record", max_containers=100_000)
    if not isinstance(data, dict) or data.get("kind") != "sweep":
        raise RecordError(f"{path}: not a minievo sweep record (no \"kind\": \"sweep\")")
    spec = data.get("spec")
    if not isinstance(spec, dict):
        raise RecordError(f"{path}: field 'spec' is {_short(spec)}, allowed: an object")
    shapes = {"preset": (str, "a preset name"), "seeds": (list, "a list of integers"),
              "base": (dict, "an object of options"),
              "settings": (list, "a list of objects of options")}
    for key, (kind, allowed) in shapes.items():
        if not isinstance(spec.get(key), kind):
            raise RecordError(f"{path}: field 'spec.{key}' is {_short(spec.get(key))}, "
                              f"allowed: {allowed}")
    return spec


__all__ = ["MAX_DEPTH", "MAX_GRID_BYTES", "MAX_LINEAGE_BYTES", "MAX_ROWS", "MAX_SWEEP_BYTES",
           "RecordError", "check_regular_file", "load_json", "parse_text", "read_bounded",
           "read_lineage", "read_sweep", "validate_rows"]
