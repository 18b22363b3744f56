// Native Verilator harness for sim.fullset: streams images into the accelerator and checks every
// logit against the reference, with no per-cycle callbacks (cocotb's testbench does the same
// check through VPI; this one only exists to make 10000 images affordable).
//
// Input file (little-endian int32 words): n_images, n_pixels, n_logits, then per image its
// n_pixels pixels and its n_logits expected logits. Output (stdout, one JSON object): images,
// mismatches [[image, logit, expected, got], ...] (first 50), cycles per image (distinct
// values), wall seconds. Exit status 0 when every logit of every image matched.
//
// With a third argument "stream" the images go in back to back (the source never waits for an
// answer), as a pipelined accelerator runs; "cycles" is then the first image's latency and
// "intervals" the distinct gaps between consecutive images' last logits.
//
// Handshake convention as the cocotb testbench: inputs are changed right after a rising edge,
// a transfer happens at a rising edge where valid and ready are both high.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "Vaccel.h"
#include "verilated.h"

// Verilator escapes the double underscore of Amaranth's port names
#define I_VALID i___05Fvalid
#define I_READY i___05Fready
#define I_PAYLOAD i___05Fpayload
#define O_VALID o___05Fvalid
#define O_READY o___05Fready
#define O_PAYLOAD o___05Fpayload

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s INPUT.bin [MAX_CYCLES_PER_IMAGE [stream]]\n", argv[0]);
        return 2;
    }
    std::FILE* f = std::fopen(argv[1], "rb");
    if (!f) {
        std::fprintf(stderr, "cannot open %s\n", argv[1]);
        return 2;
    }
    int32_t hdr[3];
    if (std::fread(hdr, 4, 3, f) != 3) return 2;
    const int n_images = hdr[0], n_pixels = hdr[1], n_logits = hdr[2];
    std::vector<int32_t> buf((size_t)n_images * (n_pixels + n_logits));
    if (std::fread(buf.data(), 4, buf.size(), f) != buf.size()) {
        std::fprintf(stderr, "%s is truncated\n", argv[1]);
        return 2;
    }
    std::fclose(f);
    const long max_cycles = argc > 2 ? std::atol(argv[2]) : 10000000L;

    auto ctx = std::make_unique<VerilatedContext>();
    ctx->commandArgs(argc, argv);
    auto top = std::make_unique<Vaccel>(ctx.get());
    long cycle = 0;
    // one rising edge, then the falling one; the design has no falling-edge logic, so the
    // main loop folds the falling edge into the evaluation of the next inputs (two evaluations
    // a cycle, not three)
    auto rise = [&]() {
        top->clk = 1;
        top->eval();
        ++cycle;
    };
    auto tick = [&]() {
        rise();
        top->clk = 0;
        top->eval();
    };
    top->clk = 0;
    top->rst = 1;
    top->I_VALID = 0;
    top->O_READY = 1;
    top->eval();
    tick();
    tick();
    top->rst = 0;
    tick();

    std::vector<std::vector<long>> bad;
    std::set<long> cycles, intervals;
    auto t0 = std::chrono::steady_clock::now();
    // one loop for both modes: without "stream" image k+1's pixels wait for image k's logits
    const bool stream = argc > 3 && std::string(argv[3]) == "stream";
    const long total_px = (long)n_images * n_pixels;
    auto pixel = [&](long k) {
        return (uint8_t)buf[(size_t)(k / n_pixels) * (n_pixels + n_logits) + k % n_pixels];
    };
    std::vector<long> first(n_images, -1);  // the edge that took each image's first pixel
    long sent = 0, progress = cycle, prev_end = -1;
    int img = 0, got = 0, first_bad = 0;
    auto present = [&]() {  // drive the next pixel, if it may go in now
        top->I_VALID = sent < total_px && (stream || sent < (long)(img + 1) * n_pixels);
        if (top->I_VALID) top->I_PAYLOAD = pixel(sent);
    };
    present();
    top->eval();
    while (img < n_images) {
        // sample the handshakes the coming edge will see
        const bool in_fire = top->I_VALID && top->I_READY;
        const bool out_fire = top->O_VALID && top->O_READY;
        const int32_t out = (int32_t)top->O_PAYLOAD;
        rise();
        if (in_fire) {
            if (sent % n_pixels == 0) first[sent / n_pixels] = cycle;
            ++sent;
        }
        if (out_fire) {
            const int32_t* want = &buf[(size_t)img * (n_pixels + n_logits) + n_pixels];
            if (out != want[got] && !first_bad) {
                bad.push_back({img, got, want[got], out});
                first_bad = 1;
            }
            progress = cycle;
            if (++got == n_logits) {
                if (!stream || prev_end < 0) {
                    cycles.insert(cycle - first[img] + 1);  // latency (stream: the first image)
                } else {
                    intervals.insert(cycle - prev_end);
                }
                prev_end = cycle;
                got = 0;
                first_bad = 0;
                ++img;
            }
        }
        top->clk = 0;
        present();
        top->eval();
        if (cycle - progress > max_cycles) {
            std::fprintf(stderr, "image %d: no result after %ld cycles\n", img, max_cycles);
            return 3;
        }
    }
    double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("{\"images\": %d, \"mismatches\": [", n_images);
    for (size_t i = 0; i < bad.size() && i < 50; ++i)
        std::printf("%s[%ld, %ld, %ld, %ld]", i ? ", " : "", bad[i][0], bad[i][1], bad[i][2],
                    bad[i][3]);
    std::printf("], \"n_mismatched_images\": %zu, \"cycles\": [", bad.size());
    bool comma = false;
    for (long c : cycles) {
        std::printf("%s%ld", comma ? ", " : "", c);
        comma = true;
    }
    std::printf("], \"intervals\": [");
    comma = false;
    for (long c : intervals) {
        std::printf("%s%ld", comma ? ", " : "", c);
        comma = true;
    }
    std::printf("], \"wall_s\": %.3f, \"total_cycles\": %ld}\n", wall, cycle);
    top->final();
    return bad.empty() ? 0 : 1;
}
