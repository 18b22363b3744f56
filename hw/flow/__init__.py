"""The open toolchain flow: board builds and clock sweeps (:mod:`.build`, :mod:`.sweep`), the
YoWASP tools (:mod:`.toolchain`, :mod:`.nextpnr_gowin`), their logs (:mod:`.flowlog`), the build
report (:mod:`.build_report`) and Verilog of any block (:mod:`.emit`)."""
