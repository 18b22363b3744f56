"""The accelerator: :mod:`.plan` derives the geometry and the cycle model from an export,
:mod:`.accelerator` wires the blocks into the whole network (its feeder in :mod:`.feed`, its
output path in :mod:`.drain`)."""
