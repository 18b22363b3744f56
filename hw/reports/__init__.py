"""The BM-against-MAC reports: the CLI and summary (:mod:`.report`), the rendering
(:mod:`.render`), one block through every tool (:mod:`.flow`, :mod:`.blocks`) and gate counts
(:mod:`.gates`)."""
