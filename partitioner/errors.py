"""The partitioner's user-facing error."""

from __future__ import annotations

from splitpoint.errors import SplitpointError


class PartitionError(SplitpointError):
    """A model, a cut or a bundle target the partitioner cannot use; one line naming what."""

