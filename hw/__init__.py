"""Amaranth generators of the BM and MAC datapaths (no torch; importing this package is cheap).

- :mod:`hw.blocks.logexp`: ``LogUnit``, ``ExpUnit`` (the shifted log/exp lookup units)
- :mod:`hw.blocks.pe`: ``BMPE``, ``MACPE`` (one lane each)
- :mod:`hw.blocks.array`: ``SystolicArray`` and ``predict_cycles``
- :mod:`hw.blocks.requant`: ``WindowSum``, ``Requant``, ``MaxPool``
- ``python -m hw.emit BLOCK --preset P --out DIR``: Verilog of any block
- ``python -m hw.gates``: gate and transistor counts of one BM lane and one MAC lane
"""
