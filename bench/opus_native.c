/* The reference the Opus decoder benchmarks compare against: libopus called from a C loop,
 * as an application decoding by itself would.  Built by bench/test_bench_opus.py with the
 * system's C compiler into a temporary folder and loaded with ctypes; it needs no libopus
 * header or library at build time: the caller passes opus_decode's address (so it calls
 * the very library fastvoice loaded).  Not part of the package. */
#include <stdint.h>

typedef int (*decode_fn)(void *st, const unsigned char *data, int32_t len, int16_t *pcm,
                         int frame_size, int decode_fec);

/* Decode `count` packets, laid end to end in `data` with their lengths in `lens`, into `pcm`
 * (room for `max_samples` per channel, as opus_decode asks).  Returns the samples per
 * channel decoded in all, or the first negative libopus error. */
long decode_packets(void *decode, void *st, const unsigned char *data, const int32_t *lens,
                    int count, int16_t *pcm, int max_samples)
{
    decode_fn fn = (decode_fn)decode;
    long total = 0;
    for (int i = 0; i < count; i++) {
        int n = fn(st, data, lens[i], pcm, max_samples, 0);
        if (n < 0)
            return n;
        total += n;
        data += lens[i];
    }
    return total;
}

/* `count` packet-loss concealments of `frame_size` samples per channel each. */
long conceal(void *decode, void *st, int count, int16_t *pcm, int frame_size)
{
    decode_fn fn = (decode_fn)decode;
    long total = 0;
    for (int i = 0; i < count; i++) {
        int n = fn(st, 0, 0, pcm, frame_size, 0);
        if (n < 0)
            return n;
        total += n;
    }
    return total;
}
