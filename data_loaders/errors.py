"""The one exception type of the data package."""

from __future__ import annotations


class DataError(ValueError):
    """A data file or data source is missing, corrupt, or not what it claims to be.

    The message always names the file (or source) and says what is wrong, e.g.
    ``train-images-idx3-ubyte.gz: truncated: header says 60000x28x28 = 47040000 bytes of
    data, file has 1234``.
    """
