"""Storage backends behind one small protocol (:mod:`.base`)."""
