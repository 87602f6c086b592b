"""The accelerator: faster implementations of the reference ops (see :mod:`minievo.accel.conv`)."""
