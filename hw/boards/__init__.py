"""What runs on a board: the platforms and their variants (:mod:`.platforms`), the UART top
(:mod:`.top`, :mod:`.uart`), the PLL solver (:mod:`.pll`) and the host side (:mod:`.host`)."""
