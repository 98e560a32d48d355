"""Pure geometry, batch first: :mod:`.rotations` (roma: 6D, axis-angle, matrices, rigid
registration), :mod:`.camera` (pinhole intrinsics, projection, framing, SPIN's crop camera
constants) and :mod:`.boxes` (person boxes with one expansion constant, crop matrices)."""
