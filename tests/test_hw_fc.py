"""The FC engine's step order (a permutation of the fan-in) and its cycle count."""

import numpy as np
import pytest

from hw.fc import fc_cycles, fc_step_order
from model.params import PRESETS


@pytest.mark.parametrize("n_ch,n_pix,cols", [(16, 324, 16), (3, 5, 2), (5, 4, 4), (1, 7, 4)])
def test_step_order_is_a_permutation(n_ch, n_pix, cols):
    order = fc_step_order(n_ch, n_pix, cols)
    assert sorted(order.tolist()) == list(range(n_ch * n_pix))
    # consecutive steps are the channels of one pixel, as the buffer word holds them
    first = order[: min(cols, n_ch)]
    assert (first == np.arange(min(cols, n_ch)) * n_pix).all()


def test_fc_cycles_counts_the_fan_in():
    bm, mac = PRESETS["bm8"], PRESETS["mac8"]
    assert fc_cycles(bm, 5184, 10) - fc_cycles(bm, 5183, 10) == 1
    assert fc_cycles(bm, 100, 10) - fc_cycles(mac, 100, 10) == 2  # the exp unit
