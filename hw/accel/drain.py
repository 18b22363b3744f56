"""The accelerator's output path (:class:`DrainSteps`): the steps of
:meth:`hw.accel.accelerator.Accelerator.elaborate` that take the array's rows through the exp,
correction and requantization units to the write stage or out as logits."""

from __future__ import annotations

from amaranth.hdl import Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFOBuffered

from ..blocks.fc import FCEngine
from ..blocks.util import rom


class DrainSteps:
    """Output-path steps of :class:`hw.accel.accelerator.Accelerator` (a mixin):
    ``_output_rows``, ``_logit_out``, ``_to_write_path`` and ``_write_stage``."""

    def _output_rows(self, m, w):
        """Rows from the array: pixel bookkeeping, the exp unit (BM), the requantizer's inputs."""
        C, L, R, arr, bm, ex, ex_slice = w.C, w.L, w.R, w.arr, w.bm, w.ex, w.ex_slice
        gi_shape, group_field, p, rq, s_bits = w.gi_shape, w.group_field, w.p, w.rq, w.s_bits
        t_out, tfifo = w.t_out, w.tfifo
        row = Signal(range(R))
        pv = Signal(24)
        xv = Signal(16)
        qv = Signal(24)
        o_gi = Signal(gi_shape)
        first_row = Signal()
        m.d.comb += first_row.eq(t_out.first & (row == 0))
        p_cur = Mux(first_row, 0, pv)
        x_cur = Mux(first_row, 0, xv)
        q_cur = Mux(first_row, 0, qv)
        row_valid = Signal()
        m.d.comb += row_valid.eq((p_cur < L["p_virt"]) & (x_cur < L["w_out"]))
        s_row = Signal(s_bits)
        with m.Switch(row):
            for r in range(R):
                with m.Case(r):
                    m.d.comb += s_row.eq(t_out.s[r])
        m.d.comb += o_gi.eq(t_out.gi)

        meta_layout = data.StructLayout({"gi": gi_shape, "valid": 1, "q": unsigned(24)})
        m.submodules.mfifo = mfifo = SyncFIFOBuffered(width=meta_layout.size, depth=16)
        mf_in = data.View(meta_layout, mfifo.w_data)
        mf_out = data.View(meta_layout, mfifo.r_data)
        m.d.comb += [mf_in.gi.eq(o_gi), mf_in.valid.eq(row_valid), mf_in.q.eq(q_cur)]

        a_take = Signal()
        if bm:
            s_layout = data.StructLayout({"gi": gi_shape, "s": unsigned(s_bits)})
            m.submodules.sfifo = sfifo = SyncFIFOBuffered(width=s_layout.size, depth=16)
            sf_in = data.View(s_layout, sfifo.w_data)
            sf_out = data.View(s_layout, sfifo.r_data)
            m.d.comb += [
                ex.i.payload.eq(arr.o.payload.acc),
                ex.i.valid.eq(arr.o.valid & sfifo.w_rdy & mfifo.w_rdy & tfifo.r_rdy),
                arr.o.ready.eq(ex.i.ready & sfifo.w_rdy & mfifo.w_rdy & tfifo.r_rdy),
                a_take.eq(arr.o.valid & arr.o.ready),
                sf_in.gi.eq(o_gi),
                sf_in.s.eq(s_row),
                sfifo.w_en.eq(a_take),
                # exp -> requant, with S and the biases of the row's group
                rq.i.valid.eq(ex_slice.o.valid),
                ex_slice.o.ready.eq(rq.i.ready),
                sfifo.r_en.eq(ex_slice.o.valid & rq.i.ready),
                rq.i.payload.e.eq(ex_slice.o.payload),
                rq.i.payload.s.eq(sf_out.s),
                rq.c_shift.eq(L["c_shift"]),
            ]
            bias_gi = sf_out.gi
        else:
            m.d.comb += [
                rq.i.payload.acc.eq(arr.o.payload.acc),
                rq.i.valid.eq(arr.o.valid & mfifo.w_rdy & tfifo.r_rdy),
                arr.o.ready.eq(rq.i.ready & mfifo.w_rdy & tfifo.r_rdy),
                a_take.eq(arr.o.valid & arr.o.ready),
            ]
            bias_gi = o_gi
        for c in range(C):
            bias_c = group_field(bias_gi, lambda r, c=c: r[4][c], signed(p.bias_bits), f"bias{c}")
            m.d.comb += rq.i.payload.bias[c].eq(bias_c)
        m.d.comb += [
            rq.out_shift.eq(L["out_shift"]),
            rq.relu.eq(L["relu"]),
            mfifo.w_en.eq(a_take),
            tfifo.r_en.eq(a_take & arr.o.payload.last),
        ]
        with m.If(a_take):
            m.d.sync += [
                row.eq(Mux(arr.o.payload.last, 0, row + 1)),
                pv.eq(p_cur + 1),
                xv.eq(Mux(x_cur + 1 == L["w_in"], 0, x_cur + 1)),
                qv.eq(q_cur + row_valid),
            ]
        w.mf_out, w.mfifo = mf_out, mfifo

    def _logit_out(self, m, w):
        """The row layout after requantization; the logit serializer (last layer on the array)."""
        C, bm, fc_head, gi_shape, p, rq = w.C, w.bm, w.fc_head, w.gi_shape, w.p, w.rq
        code_layout = data.StructLayout({
            "gi": gi_shape, "valid": 1, "q": unsigned(24),
            "x": data.ArrayLayout(unsigned(p.a_bits), C)})
        wr = Signal(code_layout)  # the row presented to the write stage
        wr_valid = Signal()  # a row is presented this cycle (always accepted)
        wr_lx = [Signal(p.lx_bits if bm else 1, name=f"wr_lx{c}") for c in range(C)]

        # logit serializer (without the FC engine: the last layer runs on the array)
        logits = Signal(data.ArrayLayout(signed(rq.out_bits), C))
        n_out = Signal(range(C + 1))
        n_send = Signal(range(C + 1))  # valid logits in the captured row (its group's columns)
        sending = Signal()
        if not fc_head:
            m.d.comb += [self.o.valid.eq(sending)]
            with m.Switch(n_out):
                for c in range(C):
                    with m.Case(c):
                        m.d.comb += self.o.payload.eq(logits[c])
            with m.If(self.o.valid & self.o.ready):
                with m.If(n_out == n_send - 1):
                    m.d.sync += [sending.eq(0), n_out.eq(0)]
                with m.Else():
                    m.d.sync += n_out.eq(n_out + 1)
        w.code_layout, w.logits, w.n_out, w.n_send = code_layout, logits, n_out, n_send
        w.sending, w.wr, w.wr_lx, w.wr_valid = sending, wr, wr_lx, wr_valid

    def _to_write_path(self, m, w):
        """Requantized rows to the logits or, through the log unit (BM), to the write stage."""
        C, L, bm, code_layout, group_field, lg = w.C, w.L, w.bm, w.code_layout, w.group_field, w.lg
        load_active, load_ready, load_row = w.load_active, w.load_ready, w.load_row
        load_valid, logits, mf_out, mfifo = w.load_valid, w.logits, w.mf_out, w.mfifo
        n_out, n_send, p, retire, rq_o = w.n_out, w.n_send, w.p, w.retire, w.rq_o
        sending, wr, wr_lx, wr_valid = w.sending, w.wr, w.wr_lx, w.wr_valid
        rq_row = Signal(code_layout)
        m.d.comb += [rq_row.gi.eq(mf_out.gi), rq_row.valid.eq(mf_out.valid),
                     rq_row.q.eq(mf_out.q)]
        for c in range(C):
            m.d.comb += rq_row.x[c].eq(rq_o.payload[c][:p.a_bits])
        to_logits = Signal()
        m.d.comb += to_logits.eq(L["last"])

        rq_take = Signal()
        if bm:
            m.submodules.cfifo = cfifo = SyncFIFOBuffered(width=code_layout.size, depth=8)
            cf_in = data.View(code_layout, cfifo.w_data)
            cf_out = data.View(code_layout, cfifo.r_data)
            lg_ready = lg.i.ready & cfifo.w_rdy
            # (outside the If: a continuous assignment, which Icarus evaluates at time 0)
            m.d.comb += load_ready.eq(load_active & lg_ready)
            with m.If(load_active):
                m.d.comb += [
                    lg.i.valid.eq(load_valid & cfifo.w_rdy),
                    cf_in.eq(load_row),
                ]
                for c in range(C):
                    m.d.comb += lg.i.payload[c].eq(load_row.x[c])
            with m.Elif(to_logits):
                m.d.comb += [rq_o.ready.eq(~sending), rq_take.eq(rq_o.valid & ~sending)]
            with m.Else():
                m.d.comb += [
                    rq_o.ready.eq(lg_ready),
                    rq_take.eq(rq_o.valid & lg_ready),
                    lg.i.valid.eq(rq_o.valid & cfifo.w_rdy),
                    cf_in.eq(rq_row),
                ]
                for c in range(C):
                    m.d.comb += lg.i.payload[c].eq(rq_row.x[c])
            m.d.comb += [
                cfifo.w_en.eq(lg.i.valid & lg.i.ready),
                lg.o.ready.eq(1),
                cfifo.r_en.eq(lg.o.valid),
                wr_valid.eq(lg.o.valid),
                wr.eq(cf_out),
            ]
            for c in range(C):
                m.d.comb += wr_lx[c].eq(lg.o.payload[c].lx)
        else:
            m.d.comb += load_ready.eq(load_active)
            with m.If(load_active):
                m.d.comb += [wr_valid.eq(load_valid), wr.eq(load_row)]
            with m.Elif(to_logits):
                m.d.comb += [rq_o.ready.eq(~sending), rq_take.eq(rq_o.valid & ~sending)]
            with m.Else():
                m.d.comb += [rq_o.ready.eq(1), rq_take.eq(rq_o.valid), wr_valid.eq(rq_o.valid),
                             wr.eq(rq_row)]
        m.d.comb += mfifo.r_en.eq(rq_take)
        with m.If(rq_take & to_logits & mf_out.valid):
            m.d.sync += [logits.eq(rq_o.payload), sending.eq(1), n_out.eq(0),
                         n_send.eq(group_field(mf_out.gi, lambda r: r[1], range(C + 1), "l_ncol"))]
        m.d.comb += retire.eq((rq_take & to_logits) | wr_valid)

    def _write_stage(self, m, w):
        """The write stage: a row's channels into distinct banks, or into the FC engine's buffer."""
        C, R, addr_bits, banks, bm, busy_fc = w.C, w.R, w.addr_bits, w.banks, w.bm, w.busy_fc
        fc_head, group_field, groups, layers = w.fc_head, w.group_field, w.groups, w.layers
        lgR, n_groups, p, plan, word, wr = w.lgR, w.n_groups, w.p, w.plan, w.word, w.wr
        wr_lx, wr_valid = w.wr_lx, w.wr_valid
        w_o0 = group_field(wr.gi, lambda r: r[0], 16, "w_o0")
        w_ncol = group_field(wr.gi, lambda r: r[1], range(C + 1), "w_ncol")
        w_dst = group_field(wr.gi, lambda r: r[2], 1, "w_dst")
        w_base = [group_field(wr.gi, lambda r, c=c: r[3][c], addr_bits + 1, f"w_base{c}")
                  for c in range(C)]
        fc = None
        if fc_head:
            # the feeder's rows go to the FC engine's buffer instead (one word per row)
            fc_lp, feeder = plan.layers[-1], layers[-1]
            n_pix = feeder.h_out * feeder.w_out
            fc_rows = [(groups[g][0] == len(layers) - 1, groups[g][1] // C * n_pix)
                       for g in range(n_groups)]
            w_fc = rom(m, wr.gi, [int(r[0]) for r in fc_rows], 1, name="w_fc")
            w_fcbase = rom(m, wr.gi, [r[1] for r in fc_rows], 24, name="w_fcbase")
            t = self.tensors[-1]
            m.submodules.fc = fc = FCEngine(
                p, word, n_ch=feeder.cout, n_pix=n_pix, cols=C, weight=t["w"], bias=t["bias"],
                c_shift=fc_lp.c_shift, out_shift=fc_lp.out_shift, neuron=fc_lp.neuron,
                sign=t.get("sign") if fc_lp.neuron != "bm15" else None)
            wiring.connect(m, wiring.flipped(self.o), fc.o)
            m.d.comb += busy_fc.eq(fc.busy | fc.start)
            m.d.sync += [fc.wr_en.eq(wr_valid & wr.valid & w_fc),
                         fc.wr_addr.eq(w_fcbase + wr.q)]
            for c in range(C):
                m.d.sync += fc.wr_data[c].x.eq(wr.x[c])
                if bm:
                    m.d.sync += fc.wr_data[c].lx.eq(wr_lx[c])
        for b in range(R):
            cb = Signal(range(R), name=f"wcol{b}")
            m.d.comb += cb.eq((b - wr.q - w_o0) & (R - 1)) if lgR else cb.eq(0)
            flat = Signal(addr_bits + 2, name=f"wflat{b}")
            wword = Signal(word, name=f"wword{b}")
            with m.Switch(cb):
                for c in range(C):
                    with m.Case(c):
                        m.d.comb += [flat.eq(w_base[c] + wr.q), wword.x.eq(wr.x[c])]
                        if bm:
                            m.d.comb += wword.lx.eq(wr_lx[c])
            en = wr_valid & wr.valid & (cb < w_ncol)
            if fc_head:
                en = en & ~w_fc
            # one register stage before the bank (timing): the write lands a cycle later, still
            # before the next layer's first read (that waits for the retirement count, which
            # is itself a register behind ``wr_valid``)
            wa_r = Signal(addr_bits + 2 - lgR, name=f"wa_r{b}")
            wd_r = Signal(word, name=f"wd_r{b}")
            m.d.sync += [wa_r.eq(flat[lgR:]), wd_r.eq(wword)]
            for bb in range(2):
                wp = banks[bb][b][1]
                depth_bits = (plan.buf_depth[bb] - 1).bit_length()
                we_r = Signal(name=f"we_r{bb}_{b}")
                m.d.sync += we_r.eq(en & (w_dst == bb))
                m.d.comb += [
                    wp.addr.eq(wa_r[:depth_bits]),
                    wp.data.eq(wd_r),
                    wp.en.eq(we_r),
                ]
        w.fc = fc
