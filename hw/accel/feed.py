"""The accelerator's feeder (:class:`FeedSteps`): the steps of
:meth:`hw.accel.accelerator.Accelerator.elaborate` that read the feature-map banks and the
weights into the array, and load an image."""

from __future__ import annotations

from amaranth.hdl import Const, Mux, Signal, unsigned
from amaranth.lib import data
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory

TFIFO_DEPTH = 8  # entries of the tile FIFO (one per tile in flight to the output path)


class FeedSteps:
    """Feeder steps of :class:`hw.accel.accelerator.Accelerator` (a mixin): ``_feeder``,
    ``_feeder_counters`` and ``_image_load``; each takes the module and the shared wires."""

    def _feeder(self, m, w):
        """The tile FIFO, the bank read addresses, the rotation into lanes and the window sums."""
        R, arr, b_first, b_firsttile, b_gi = w.R, w.arr, w.b_first, w.b_firsttile, w.b_gi
        b_last, b_slo, b_src, banks, bm, bv = w.b_last, w.b_slo, w.b_src, w.banks, w.bm, w.bv
        gi_shape, lgR, p, plan, s_bits, s_idx = w.gi_shape, w.lgR, w.p, w.plan, w.s_bits, w.s_idx
        wcol, wmems, word, wptr = w.wcol, w.wmems, w.word, w.wptr
        # tile FIFO: (gi, first tile of its group, S per lane)
        tile_layout = data.StructLayout({"gi": gi_shape, "first": 1,
                                         "s": data.ArrayLayout(unsigned(s_bits), R)})
        m.submodules.tfifo = tfifo = SyncFIFOBuffered(width=tile_layout.size, depth=TFIFO_DEPTH)
        t_in = data.View(tile_layout, tfifo.w_data)
        t_out = data.View(tile_layout, tfifo.r_data)

        # stage R: the bank words (of the buffer read) and the weights of stage B registered,
        # before the rotation and the array's entry (timing: an ECP5 block RAM's output comes
        # about 6 ns after the clock). Stages B and R advance together (``adv``).
        rv = Signal()
        r_last, r_first, r_firsttile = Signal(), Signal(), Signal()
        r_slo = Signal(max(1, lgR))
        r_gi = Signal(gi_shape)
        r_word = [Signal(word, name=f"r_word{b}") for b in range(R)]
        r_w = [Signal(arr.i.payload.b[c].shape(), name=f"r_w{c}") for c in range(len(wcol))]
        transfer = Signal()
        t_pend = Signal()  # a tile's entry goes into the FIFO this cycle (see window sums)
        m.d.comb += [
            # room for this tile's entry, after the one still being written
            arr.i.valid.eq(rv & (~r_last | Mux(t_pend, tfifo.w_level < TFIFO_DEPTH - 1,
                                               tfifo.w_rdy))),
            transfer.eq(arr.i.valid & arr.i.ready),
        ]
        adv = Signal()
        m.d.comb += adv.eq(~rv | transfer)
        with m.If(adv):
            m.d.sync += [rv.eq(bv), r_last.eq(b_last), r_first.eq(b_first),
                         r_firsttile.eq(b_firsttile), r_slo.eq(b_slo), r_gi.eq(b_gi)]
            m.d.sync += [r_word[b].eq(Mux(b_src, banks[1][b][0].data, banks[0][b][0].data))
                         for b in range(R)]
            m.d.sync += [r_w[c].eq(rp.data if j is None else rp.data[j])
                         for c, (rp, j) in enumerate(wcol)]

        # read addresses: lane j <- bank (s + j) mod R, bank b reads F_b = s + ((b - s) mod R)
        s_lo = s_idx[:lgR] if lgR else Const(0, 1)
        s_hi = s_idx[lgR:]
        for b in range(2):
            for j, (rp, _) in enumerate(banks[b]):
                depth_bits = (plan.buf_depth[b] - 1).bit_length()
                m.d.comb += [
                    rp.addr.eq((s_hi + (j < s_lo))[:depth_bits]),
                    rp.en.eq(adv),
                ]
        for rp in wmems:
            m.d.comb += [rp.addr.eq(wptr), rp.en.eq(adv)]

        # rotate bank outputs into lanes
        lane_x = []
        for j in range(R):
            sel = Signal(range(R), name=f"rot{j}")
            m.d.comb += sel.eq((r_slo + j) & (R - 1)) if lgR else sel.eq(0)
            wv = Signal(word, name=f"lane{j}")
            with m.Switch(sel):
                for b in range(R):
                    with m.Case(b):
                        m.d.comb += wv.eq(r_word[b])
            lane_x.append(wv)
            if bm:
                m.d.comb += [arr.i.payload.a[j].lx.eq(wv.lx),
                             arr.i.payload.a[j].zero.eq((wv.x == 0) if p.dx == 0 else 0)]
            else:
                m.d.comb += arr.i.payload.a[j].eq(wv.x)
        m.d.comb += [arr.i.payload.b[c].eq(r_w[c]) for c in range(len(wcol))]
        m.d.comb += arr.i.payload.last.eq(r_last)

        # window sums per lane, one register stage behind the array input (timing: the block
        # RAM output, the rotation and the adder do not fit one cycle); the tile's entry goes
        # into the FIFO a cycle after its last beat
        c_valid = Signal()
        c_last = Signal()
        c_first = Signal()
        c_gi = Signal(gi_shape)
        c_firsttile = Signal()
        c_x = [Signal(p.a_bits, name=f"c_x{j}") for j in range(R)]
        m.d.sync += c_valid.eq(transfer)
        with m.If(transfer):
            m.d.sync += [c_last.eq(r_last), c_first.eq(r_first), c_gi.eq(r_gi),
                         c_firsttile.eq(r_firsttile)]
            m.d.sync += [c_x[j].eq(lane_x[j].x) for j in range(R)]
        s_acc = [Signal(s_bits, name=f"s_acc{j}") for j in range(R)]
        for j in range(R):
            s_now = Signal(s_bits, name=f"s_now{j}")
            m.d.comb += s_now.eq(Mux(c_first, 0, s_acc[j]) + c_x[j])
            with m.If(c_valid):
                m.d.sync += s_acc[j].eq(s_now)
            m.d.comb += t_in.s[j].eq(s_now)
        m.d.comb += [
            t_in.gi.eq(c_gi),
            t_in.first.eq(c_firsttile),
            t_pend.eq(c_valid & c_last),
            tfifo.w_en.eq(t_pend),
        ]
        w.adv, w.s_lo, w.t_out, w.tfifo = adv, s_lo, t_out, tfifo

    def _feeder_counters(self, m, w):
        """The feeder's counters: one step a beat, then the ends of tiles, groups and layers."""
        L, R, WAIT, adv, b_first, b_firsttile = w.L, w.R, w.WAIT, w.adv, w.b_first, w.b_firsttile
        b_gi, b_last, b_slo, b_src, bv, ci = w.b_gi, w.b_last, w.b_slo, w.b_src, w.bv, w.ci
        gbase, gi, grp, issuing, kk, kx, ky = w.gbase, w.gi, w.grp, w.issuing, w.kk, w.kx, w.ky
        p0, s_idx, s_lo, state, tile, wptr = w.p0, w.s_idx, w.s_lo, w.state, w.tile, w.wptr
        # counters advance on every beat issued into stage B
        fan_m1 = L["fan_m1"]
        last_step = Signal()
        m.d.comb += last_step.eq(kk == fan_m1)
        last_tile = Signal()
        m.d.comb += last_tile.eq(tile == L["tiles_m1"])
        last_group = Signal()
        m.d.comb += last_group.eq(grp == L["ngroups_m1"])
        with m.If(adv):
            m.d.sync += bv.eq(issuing)
            with m.If(issuing):
                m.d.sync += [
                    b_last.eq(last_step),
                    b_first.eq(kk == 0),
                    b_slo.eq(s_lo),
                    b_gi.eq(gi),
                    b_firsttile.eq(tile == 0),
                    b_src.eq(L["src"]),
                    wptr.eq(wptr + 1),
                    kk.eq(kk + 1),
                ]
                with m.If(kx != L["k_m1"]):
                    m.d.sync += [kx.eq(kx + 1), s_idx.eq(s_idx + 1)]
                with m.Elif(ky != L["k_m1"]):
                    m.d.sync += [kx.eq(0), ky.eq(ky + 1), s_idx.eq(s_idx + L["ky_inc"])]
                with m.Else():
                    m.d.sync += [kx.eq(0), ky.eq(0), ci.eq(ci + 1), s_idx.eq(s_idx + L["c_inc"])]
                with m.If(last_step):
                    m.d.sync += [kx.eq(0), ky.eq(0), ci.eq(0), kk.eq(0), wptr.eq(gbase)]
                    with m.If(~last_tile):
                        m.d.sync += [tile.eq(tile + 1), p0.eq(p0 + R), s_idx.eq(p0 + R)]
                    with m.Else():
                        m.d.sync += [tile.eq(0), p0.eq(0), s_idx.eq(0),
                                     gbase.eq(gbase + L["fan_in"]),
                                     wptr.eq(gbase + L["fan_in"])]
                        with m.If(~last_group):
                            m.d.sync += [grp.eq(grp + 1), gi.eq(gi + 1)]
                        with m.Else():
                            m.d.sync += state.eq(WAIT)

    def _image_load(self, m, w):
        """The image load: straight into the write path, or (``overlap``) staged and copied."""
        C, LOAD, WAIT, code_layout, loading = w.C, w.LOAD, w.WAIT, w.code_layout, w.loading
        npix, overlap, p, plan, staged, state = w.npix, w.overlap, w.p, w.plan, w.staged, w.state
        # image load rows: ``load_row`` goes to the write path while ``load_active``; it is taken
        # when ``load_valid`` and ``load_ready``
        load_row = Signal(code_layout)
        load_active, load_valid, load_ready = Signal(), Signal(), Signal()
        load_take = Signal()
        m.d.comb += load_take.eq(load_valid & load_ready)
        pix_code = Signal(p.a_bits)
        m.d.comb += pix_code.eq(self.i.payload >> plan.pixel_shift)
        if overlap:
            # the stager packs ``C`` pixels per word of the staging memory, one image ahead;
            # ``staged`` is set by the last pixel and cleared when the copy has read the image
            n_words = plan.load_words
            smem = Memory(shape=data.ArrayLayout(unsigned(p.a_bits), C), depth=n_words, init=[])
            m.submodules.stage = smem
            s_wp, s_rp = smem.write_port(), smem.read_port()
            spos = Signal(range(C))
            sword = Signal(range(n_words))
            packed = Signal(data.ArrayLayout(unsigned(p.a_bits), C))
            s_take = Signal()
            m.d.comb += [self.i.ready.eq(~staged), s_take.eq(self.i.valid & ~staged)]
            last_pix = Signal()
            m.d.comb += last_pix.eq(npix == plan.n_pixels - 1)
            for c in range(C):
                m.d.comb += s_wp.data[c].eq(Mux(spos == c, pix_code, packed[c]))
            m.d.comb += [s_wp.addr.eq(sword),
                         s_wp.en.eq(s_take & ((spos == C - 1) | last_pix))]
            with m.If(s_take):
                m.d.sync += [packed[c].eq(s_wp.data[c]) for c in range(C)]
                with m.If(last_pix):
                    m.d.sync += [npix.eq(0), spos.eq(0), sword.eq(0), staged.eq(1)]
                with m.Else():
                    m.d.sync += npix.eq(npix + 1)
                    with m.If(spos == C - 1):
                        m.d.sync += [spos.eq(0), sword.eq(sword + 1)]
                    with m.Else():
                        m.d.sync += spos.eq(spos + 1)
            # the copy: word ``cw`` is read in state LOAD and presented a cycle later
            cw = Signal(range(n_words + 1))
            cw_q = Signal(24)  # ``cw * C``, the word's first pixel, counted up (no multiplier)
            lv = Signal()
            l_q = Signal(24)
            l_adv = Signal()
            copy_issue = Signal()
            m.d.comb += [
                copy_issue.eq((state == LOAD) & staged),
                l_adv.eq(~lv | load_take),
                s_rp.addr.eq(cw),
                s_rp.en.eq(l_adv),
                load_active.eq(lv),
                load_valid.eq(lv),
                load_row.gi.eq(0), load_row.valid.eq(1), load_row.q.eq(l_q),
            ]
            for c in range(C):
                m.d.comb += load_row.x[c].eq(s_rp.data[c])
            with m.If(l_adv):
                m.d.sync += lv.eq(copy_issue)
                with m.If(copy_issue):
                    m.d.sync += [l_q.eq(cw_q), cw.eq(cw + 1), cw_q.eq(cw_q + C)]
                    with m.If(cw == n_words - 1):
                        m.d.sync += [cw.eq(0), cw_q.eq(0), staged.eq(0), loading.eq(1),
                                     state.eq(WAIT)]
        else:
            m.d.comb += [
                load_active.eq(state == LOAD),
                load_valid.eq(self.i.valid),
                self.i.ready.eq(load_ready),
                load_row.gi.eq(0), load_row.valid.eq(1), load_row.q.eq(npix),
                load_row.x[0].eq(pix_code),
            ]
            with m.If(load_take):
                m.d.sync += npix.eq(npix + 1)
        w.load_active, w.load_ready, w.load_row = load_active, load_ready, load_row
        w.load_take, w.load_valid = load_take, load_valid
