"""Datapath blocks, each an Amaranth component with its own tests: the shifted log/exp lookup
units (:mod:`.logexp`), one lane (:mod:`.pe`), the systolic array (:mod:`.array`), window sums
and requantization (:mod:`.requant`), the classifier engine (:mod:`.fc`), the iCE40 SPRAM wrapper
(:mod:`.spram`) and the stream helpers they share (:mod:`.util`)."""
