"""The BM-against-MAC reports: the CLI and summary (:mod:`.report`), the rendering and plots
(:mod:`.render`, :mod:`.plots`), one block through every tool (:mod:`.flow`, :mod:`.blocks`)
and gate counts (:mod:`.gates`)."""
