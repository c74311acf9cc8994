/*
 * rtt_fabric._ring: the hot path of the shm lane.
 *
 * An SPSC ring over a caller-provided shared mapping (a memfd mmap). The byte layout, the memory
 * ordering and the doorbell protocol are specified in fabric/FRAME.md; this file implements that
 * document and nothing else. rtt_fabric.ring creates the mapping and the eventfd and calls in here.
 *
 * Ordering: head and tail are published with C11 release stores and read with acquire loads; the
 * doorbell handshake is a Dekker pair (seq_cst store/fence on each side). No locks anywhere.
 * The GIL is held on the hot path (each call is tens of nanoseconds; dropping it costs more) and
 * released only while blocked on the doorbell.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#include <nmmintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define RING_MAGIC 0x52545452u  /* "RTTR" little-endian */
#define RING_VERSION 1u
#define CONTROL_SIZE 256u
#define FRAME_MAGIC 0x46545452u /* "RTTF" little-endian */
#define FRAME_HEADER 32u        /* 24-byte DESIGN.md header + u64 enqueue timestamp */
#define SPIN_BATCH 32           /* polls between clock reads while spinning */
#define FLAG_TIMESTAMP 0x0001u
#define FLAG_MARK 0x0002u       /* admitted over the route's rate under the `mark` policy */
#define FLAG_MASK 0x0002u       /* flags a sender may set */

/* Control block offsets: one cache line each for the geometry, head, tail and the doorbell. */
#define OFF_SEALED 16u
#define OFF_HEAD 64u
#define OFF_TAIL 128u
#define OFF_CRC_ERRORS 136u
#define OFF_WAITING 192u

typedef struct {
    uint32_t magic;
    uint16_t flags;
    uint16_t reserved;
    uint32_t route_id;
    uint32_t frame_id;
    uint32_t len;
    uint32_t crc32c;
    uint64_t enq_ns;
} frame_hdr;

_Static_assert(sizeof(frame_hdr) == FRAME_HEADER, "frame header is 32 bytes");

static PyObject *CorruptFrame;

/* ---------------------------------------------------------------- the flight page ---- */
/* A per-route page of counters and a latency histogram (fabric/FRAME.md, "Flight page"). Each
 * 64-byte line has one writer: the daemon (header, breaker), the producer, or the consumer. The
 * daemon reads the page while both ends run; every store is a relaxed atomic so no read tears. */

#define FLIGHT_MAGIC 0x4C545452u /* "RTTL" little-endian */
#define FLIGHT_VERSION 1u
#define FLIGHT_SUB_BITS 6u
#define FLIGHT_SUB (1u << FLIGHT_SUB_BITS)
#define FLIGHT_BUCKETS 2048u     /* 64 linear + 31 octaves x 64: exact to 64 ns, 1/64 after */
#define FLIGHT_HIST 256u         /* byte offset of bucket 0 */
#define FLIGHT_SIZE (FLIGHT_HIST + 8u * FLIGHT_BUCKETS)
/* u64 word indices of the counters */
enum {
    F_TX_FRAMES = 8, F_TX_BYTES, F_DROPS, F_MARKED, F_NACKED, F_BUFFERED, F_TX_SYSCALLS, F_OVERSIZE,
    F_RX_FRAMES = 16, F_RX_BYTES, F_CRC_ERRORS, F_RX_SYSCALLS, F_RX_MARKED,
    F_BREAKER = 24, /* u32 state at byte 192, set by the daemon */
    F_LAST = 31,
};

static inline void fl_add(uint64_t *fl, int word, uint64_t n) {
    _Atomic uint64_t *w = (_Atomic uint64_t *)(fl + word);
    atomic_store_explicit(w, atomic_load_explicit(w, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline uint32_t fl_bucket(uint64_t v) {
    if (v < FLIGHT_SUB) {
        return (uint32_t)v;
    }
    uint32_t e = 63u - (uint32_t)__builtin_clzll(v); /* >= FLIGHT_SUB_BITS */
    uint32_t idx = (e - FLIGHT_SUB_BITS + 1u) * FLIGHT_SUB
                 + (uint32_t)((v >> (e - FLIGHT_SUB_BITS)) & (FLIGHT_SUB - 1u));
    return idx < FLIGHT_BUCKETS ? idx : FLIGHT_BUCKETS - 1u;
}

/* One received frame: counters and its enqueue-to-dequeue latency. */
static inline void fl_received(uint64_t *fl, uint64_t lat_ns, uint64_t nbytes, int marked) {
    fl_add(fl, F_RX_FRAMES, 1);
    fl_add(fl, F_RX_BYTES, nbytes);
    if (marked) {
        fl_add(fl, F_RX_MARKED, 1);
    }
    fl_add(fl, (int)(FLIGHT_HIST / 8u + fl_bucket(lat_ns)), 1);
}

/* Borrow a writable flight page from a buffer object; NULL (no exception) for None. */
static int fl_get(PyObject *obj, Py_buffer *view, uint64_t **out) {
    *out = NULL;
    if (obj == NULL || obj == Py_None) {
        return 0;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE) < 0) {
        return -1;
    }
    uint32_t magic;
    if ((size_t)view->len < FLIGHT_SIZE || ((uintptr_t)view->buf & 7u)) {
        goto bad;
    }
    memcpy(&magic, view->buf, 4);
    if (magic != FLIGHT_MAGIC) {
        goto bad;
    }
    *out = (uint64_t *)view->buf;
    return 0;
bad:
    PyBuffer_Release(view);
    PyErr_SetString(PyExc_ValueError, "buffer does not hold a flight page (see FRAME.md)");
    return -1;
}

/* ---------------------------------------------------------------- crc32c (Castagnoli) ---- */

static uint32_t sw_table[256];
static int have_sse42;

static void sw_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        }
        sw_table[i] = c;
    }
}

/* Raw register update: no pre/post inversion, the same contract as the SSE4.2 instruction. */
static uint32_t crc_sw(uint32_t crc, const uint8_t *p, size_t n) {
    while (n--) {
        crc = sw_table[(crc ^ *p++) & 0xFFu] ^ (crc >> 8);
    }
    return crc;
}

#if defined(__x86_64__)
/* Three interleaved streams hide the instruction's 3-cycle latency; the partial registers are
 * joined with a table-driven "advance by STRIPE zero bytes" operator built at import. */
#define STRIPE 256u
static uint32_t shift_table[4][256];

__attribute__((target("sse4.2")))
static uint64_t crc_hw_serial(uint64_t c, const uint8_t *p, size_t n) {
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        n -= 8;
    }
    while (n--) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
    }
    return c;
}

static inline uint32_t crc_shift(uint32_t c) {
    return shift_table[0][c & 0xFFu] ^ shift_table[1][(c >> 8) & 0xFFu]
         ^ shift_table[2][(c >> 16) & 0xFFu] ^ shift_table[3][c >> 24];
}

__attribute__((target("sse4.2")))
static uint32_t crc_hw(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t a = crc;
    while (n >= 3 * STRIPE) {
        uint64_t b = 0, c = 0;
        for (size_t i = 0; i < STRIPE; i += 8) {
            uint64_t va, vb, vc;
            memcpy(&va, p + i, 8);
            memcpy(&vb, p + STRIPE + i, 8);
            memcpy(&vc, p + 2 * STRIPE + i, 8);
            a = _mm_crc32_u64(a, va);
            b = _mm_crc32_u64(b, vb);
            c = _mm_crc32_u64(c, vc);
        }
        a = crc_shift(crc_shift((uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)c;
        p += 3 * STRIPE;
        n -= 3 * STRIPE;
    }
    return (uint32_t)crc_hw_serial(a, p, n);
}

static void shift_init(void) {
    static const uint8_t zeros[STRIPE];
    uint32_t basis[32];
    for (int bit = 0; bit < 32; bit++) {
        basis[bit] = have_sse42 ? (uint32_t)crc_hw_serial(1u << bit, zeros, STRIPE)
                                : crc_sw(1u << bit, zeros, STRIPE);
    }
    for (int k = 0; k < 4; k++) {
        for (uint32_t v = 0; v < 256; v++) {
            uint32_t acc = 0;
            for (int j = 0; j < 8; j++) {
                if (v & (1u << j)) {
                    acc ^= basis[8 * k + j];
                }
            }
            shift_table[k][v] = acc;
        }
    }
}
#endif

static uint32_t crc_update(uint32_t crc, const void *p, size_t n) {
#if defined(__x86_64__)
    if (have_sse42) {
        return crc_hw(crc, (const uint8_t *)p, n);
    }
#endif
    return crc_sw(crc, (const uint8_t *)p, n);
}

/* Covers route_id, frame_id, len, enq_ns and the payload: everything but magic/flags and itself. */
static uint32_t frame_crc(const frame_hdr *h, const void *payload, size_t n) {
    uint32_t c = crc_update(0xFFFFFFFFu, &h->route_id, 12);
    c = crc_update(c, &h->enq_ns, 8);
    return ~crc_update(c, payload, n);
}

static uint64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---------------------------------------------------------------- the Ring object ---- */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int attached;
    uint8_t *slots;
    _Atomic uint64_t *head;
    _Atomic uint64_t *tail;
    _Atomic uint64_t *crc_errors;
    _Atomic uint32_t *waiting;
    _Atomic uint32_t *sealed;
    uint64_t mask;
    uint32_t slot_count;
    uint32_t slot_size;
    uint32_t max_payload;
    uint64_t seen_tail; /* producer's last view of tail: re-read only when the ring looks full */
    uint64_t seen_head; /* consumer's last view of head: re-read only when the ring looks empty */
    int doorbell;
    Py_buffer flight_view;
    uint64_t *fl; /* the route's flight page, or NULL */
} Ring;

static int ring_check(Ring *self) {
    if (!self->attached) {
        PyErr_SetString(PyExc_ValueError, "ring is closed");
        return -1;
    }
    return 0;
}

static int ring_init(Ring *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"buffer", "doorbell", "flight", NULL};
    PyObject *buf, *flight = NULL;
    int doorbell = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$iO", kwlist, &buf, &doorbell, &flight)) {
        return -1;
    }
    if (self->attached) {
        PyErr_SetString(PyExc_RuntimeError, "ring already attached");
        return -1;
    }
    if (PyObject_GetBuffer(buf, &self->view, PyBUF_WRITABLE) < 0) {
        return -1;
    }
    uint8_t *base = (uint8_t *)self->view.buf;
    uint32_t magic, version, count, size;
    if ((size_t)self->view.len < CONTROL_SIZE) {
        goto bad;
    }
    memcpy(&magic, base, 4);
    version = (uint32_t)base[4] | ((uint32_t)base[5] << 8);
    memcpy(&count, base + 8, 4);
    memcpy(&size, base + 12, 4);
    if (magic != RING_MAGIC || version != RING_VERSION || count == 0 || (count & (count - 1))
        || size < 64 || size % 64 || (size_t)self->view.len < CONTROL_SIZE + (size_t)count * size) {
        goto bad;
    }
    if (fl_get(flight, &self->flight_view, &self->fl) < 0) {
        PyBuffer_Release(&self->view);
        return -1;
    }
    self->attached = 1;
    self->slots = base + CONTROL_SIZE;
    self->sealed = (_Atomic uint32_t *)(base + OFF_SEALED);
    self->head = (_Atomic uint64_t *)(base + OFF_HEAD);
    self->tail = (_Atomic uint64_t *)(base + OFF_TAIL);
    self->crc_errors = (_Atomic uint64_t *)(base + OFF_CRC_ERRORS);
    self->waiting = (_Atomic uint32_t *)(base + OFF_WAITING);
    self->slot_count = count;
    self->mask = count - 1;
    self->slot_size = size;
    self->max_payload = size - FRAME_HEADER;
    self->seen_tail = atomic_load_explicit(self->tail, memory_order_acquire);
    self->seen_head = atomic_load_explicit(self->head, memory_order_acquire);
    self->doorbell = doorbell;
    return 0;
bad:
    PyBuffer_Release(&self->view);
    PyErr_SetString(PyExc_ValueError, "buffer does not hold a formatted ring (see FRAME.md)");
    return -1;
}

static void ring_release(Ring *self) {
    if (self->attached) {
        self->attached = 0;
        PyBuffer_Release(&self->view);
        if (self->fl != NULL) {
            self->fl = NULL;
            PyBuffer_Release(&self->flight_view);
        }
    }
}

static void ring_dealloc(Ring *self) {
    ring_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *ring_close(Ring *self, PyObject *unused) {
    ring_release(self);
    Py_RETURN_NONE;
}

/* ---- producer side ---- */

static int parse_u32(PyObject *o, uint32_t *out) {
    unsigned long v = PyLong_AsUnsignedLong(o);
    if (v == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    if (v > 0xFFFFFFFFul) {
        PyErr_SetString(PyExc_OverflowError, "route_id and frame_id are u32");
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* A read-only view of a bytes-like payload; bytes objects skip the buffer protocol. */
typedef struct {
    const uint8_t *p;
    Py_ssize_t n;
    Py_buffer view;
    int has_view;
} payload_t;

static int payload_get(PyObject *o, payload_t *pl) {
    if (PyBytes_CheckExact(o)) {
        pl->p = (const uint8_t *)PyBytes_AS_STRING(o);
        pl->n = PyBytes_GET_SIZE(o);
        pl->has_view = 0;
        return 0;
    }
    if (PyObject_GetBuffer(o, &pl->view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    pl->p = (const uint8_t *)pl->view.buf;
    pl->n = pl->view.len;
    pl->has_view = 1;
    return 0;
}

static void payload_put(payload_t *pl) {
    if (pl->has_view) {
        PyBuffer_Release(&pl->view);
    }
}

static void write_frame(Ring *self, uint64_t seq, uint32_t route, uint32_t frame,
                        const uint8_t *p, size_t n, uint64_t now, uint16_t flags) {
    uint8_t *slot = self->slots + (size_t)(seq & self->mask) * self->slot_size;
    frame_hdr h = {FRAME_MAGIC, (uint16_t)(FLAG_TIMESTAMP | flags), 0, route, frame, (uint32_t)n,
                   0, now};
    h.crc32c = frame_crc(&h, p, n);
    memcpy(slot, &h, sizeof h);
    memcpy(slot + FRAME_HEADER, p, n);
}

/* Free slots as the producer sees them, refreshing its view of tail only when short. A cached
 * view that is stale (say, inherited across fork) or a tail past head reads as "refresh". */
static uint64_t free_slots(Ring *self, uint64_t h, uint64_t want) {
    uint64_t used = h - self->seen_tail;
    if (used > self->slot_count || self->slot_count - used < want) {
        self->seen_tail = atomic_load_explicit(self->tail, memory_order_acquire);
        used = h - self->seen_tail;
        if (used > self->slot_count) {
            return 0; /* tail ahead of head: the peer broke the protocol; send nothing */
        }
    }
    return self->slot_count - used;
}

static void publish(Ring *self, uint64_t h, uint64_t frames, uint64_t nbytes) {
    atomic_store_explicit(self->head, h, memory_order_release);
    if (self->fl != NULL) {
        fl_add(self->fl, F_TX_FRAMES, frames);
        fl_add(self->fl, F_TX_BYTES, nbytes);
    }
    if (self->doorbell >= 0) {
        /* Dekker with the consumer's wait(): store head, full fence, then read its flag. */
        atomic_thread_fence(memory_order_seq_cst);
        if (atomic_load_explicit(self->waiting, memory_order_relaxed)) {
            uint64_t one = 1;
            ssize_t r = write(self->doorbell, &one, sizeof one);
            (void)r; /* EAGAIN means the counter is already non-zero: the consumer will wake */
            if (self->fl != NULL) {
                fl_add(self->fl, F_TX_SYSCALLS, 1);
            }
        }
    }
}

/* The optional trailing `flags` argument of push and send_many: only FLAG_MARK may be set. */
static int parse_flags(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t at, uint16_t *out) {
    *out = 0;
    if (nargs <= at) {
        return 0;
    }
    long v = PyLong_AsLong(args[at]);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (v & ~(long)FLAG_MASK) {
        PyErr_SetString(PyExc_ValueError, "flags: only MARK may be set by a sender");
        return -1;
    }
    *out = (uint16_t)v;
    return 0;
}

static PyObject *oversize(Ring *self, Py_ssize_t index, Py_ssize_t n) {
    if (self->fl != NULL) {
        fl_add(self->fl, F_OVERSIZE, 1);
    }
    if (index < 0) {
        return PyErr_Format(PyExc_ValueError, "payload of %zd bytes exceeds max_payload %u",
                            n, self->max_payload);
    }
    return PyErr_Format(PyExc_ValueError, "payload %zd of %zd bytes exceeds max_payload %u",
                        index, n, self->max_payload);
}

static PyObject *ring_push(Ring *self, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t route, frame;
    uint16_t flags;
    payload_t pl;
    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "push(route_id, frame_id, payload, flags=0)");
        return NULL;
    }
    if (ring_check(self) < 0 || parse_u32(args[0], &route) < 0 || parse_u32(args[1], &frame) < 0
        || parse_flags(args, nargs, 3, &flags) < 0 || payload_get(args[2], &pl) < 0) {
        return NULL;
    }
    if ((size_t)pl.n > self->max_payload) {
        payload_put(&pl);
        return oversize(self, -1, pl.n);
    }
    uint64_t h = atomic_load_explicit(self->head, memory_order_relaxed);
    if (free_slots(self, h, 1) == 0) {
        payload_put(&pl);
        Py_RETURN_FALSE;
    }
    write_frame(self, h, route, frame, pl.p, (size_t)pl.n, monotonic_ns(), flags);
    payload_put(&pl);
    publish(self, h + 1, 1, (uint64_t)pl.n);
    Py_RETURN_TRUE;
}

static PyObject *ring_send_many(Ring *self, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t route, first;
    uint16_t flags;
    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "send_many(route_id, first_frame_id, payloads, flags=0)");
        return NULL;
    }
    if (ring_check(self) < 0 || parse_u32(args[0], &route) < 0 || parse_u32(args[1], &first) < 0
        || parse_flags(args, nargs, 3, &flags) < 0) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[2], "payloads must be a sequence");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t total = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    /* Validate every size first, so an oversize payload sends nothing. */
    for (Py_ssize_t i = 0; i < total; i++) {
        payload_t pl;
        if (payload_get(items[i], &pl) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
        payload_put(&pl);
        if ((size_t)pl.n > self->max_payload) {
            Py_DECREF(seq);
            return oversize(self, i, pl.n);
        }
    }
    uint64_t h = atomic_load_explicit(self->head, memory_order_relaxed);
    uint64_t room = free_slots(self, h, (uint64_t)total);
    Py_ssize_t n = (uint64_t)total < room ? total : (Py_ssize_t)room;
    uint64_t now = monotonic_ns(), nbytes = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        payload_t pl;
        if (payload_get(items[i], &pl) < 0) { /* cannot fail: checked above */
            Py_DECREF(seq);
            return NULL;
        }
        write_frame(self, h + (uint64_t)i, route, first + (uint32_t)i, pl.p, (size_t)pl.n, now,
                    flags);
        nbytes += (uint64_t)pl.n;
        payload_put(&pl);
    }
    Py_DECREF(seq);
    if (n > 0) {
        publish(self, h + (uint64_t)n, (uint64_t)n, nbytes);
    }
    return PyLong_FromSsize_t(n);
}

/* ---- consumer side ---- */

/* Frames ready at tail `t` as the consumer sees them, re-reading head only when none are; never
 * more than a ring's worth, whatever a stale cache or a misbehaving peer says. */
static uint64_t readable(Ring *self, uint64_t t) {
    uint64_t avail = self->seen_head - t;
    if (avail == 0 || avail > self->slot_count) {
        self->seen_head = atomic_load_explicit(self->head, memory_order_acquire);
        avail = self->seen_head - t;
        if (avail > self->slot_count) {
            return 0;
        }
    }
    return avail;
}

/* Copy one frame out of slot `t`. Returns a new tuple, or NULL with *corrupt set when the frame
 * fails its checks (no exception set), or NULL with an exception on allocation failure. The crc is
 * computed over the private copy, so a peer scribbling on the slot cannot pass a check it fails. */
enum { SHAPE_PLAIN, SHAPE_TIMED, SHAPE_FLAGS }; /* what a popped frame's tuple carries */

static PyObject *read_frame(Ring *self, uint64_t t, int shape, uint64_t now, int *corrupt) {
    const uint8_t *slot = self->slots + (size_t)(t & self->mask) * self->slot_size;
    frame_hdr h;
    memcpy(&h, slot, sizeof h);
    *corrupt = 0;
    if (h.magic != FRAME_MAGIC || h.len > self->max_payload) {
        *corrupt = 1;
        return NULL;
    }
    PyObject *payload = PyBytes_FromStringAndSize((const char *)slot + FRAME_HEADER, h.len);
    if (payload == NULL) {
        return NULL;
    }
    if (frame_crc(&h, PyBytes_AS_STRING(payload), h.len) != h.crc32c) {
        Py_DECREF(payload);
        *corrupt = 1;
        return NULL;
    }
    PyObject *tup = PyTuple_New(shape == SHAPE_PLAIN ? 3 : 4);
    if (tup == NULL) {
        Py_DECREF(payload);
        return NULL;
    }
    int stamped = (h.flags & FLAG_TIMESTAMP) && now >= h.enq_ns;
    if (self->fl != NULL) {
        fl_received(self->fl, stamped ? now - h.enq_ns : 0, h.len, (h.flags & FLAG_MARK) != 0);
    }
    PyTuple_SET_ITEM(tup, 0, PyLong_FromUnsignedLong(h.route_id));
    PyTuple_SET_ITEM(tup, 1, PyLong_FromUnsignedLong(h.frame_id));
    PyTuple_SET_ITEM(tup, 2, payload);
    if (shape == SHAPE_TIMED) {
        PyTuple_SET_ITEM(tup, 3, PyLong_FromLongLong(stamped ? (long long)(now - h.enq_ns) : -1));
    } else if (shape == SHAPE_FLAGS) {
        PyTuple_SET_ITEM(tup, 3, PyLong_FromLong(h.flags & FLAG_MASK));
    }
    return tup;
}

static void count_corrupt(Ring *self) {
    /* The consumer is the only writer, so a relaxed read-modify-store is enough. */
    uint64_t v = atomic_load_explicit(self->crc_errors, memory_order_relaxed);
    atomic_store_explicit(self->crc_errors, v + 1, memory_order_relaxed);
    if (self->fl != NULL) {
        fl_add(self->fl, F_CRC_ERRORS, 1);
    }
}

static PyObject *pop_impl(Ring *self, int shape) {
    if (ring_check(self) < 0) {
        return NULL;
    }
    uint64_t t = atomic_load_explicit(self->tail, memory_order_relaxed);
    if (!readable(self, t)) {
        Py_RETURN_NONE;
    }
    int corrupt;
    uint64_t now = (shape == SHAPE_TIMED || self->fl != NULL) ? monotonic_ns() : 0;
    PyObject *tup = read_frame(self, t, shape, now, &corrupt);
    if (tup == NULL && !corrupt) {
        return NULL;
    }
    atomic_store_explicit(self->tail, t + 1, memory_order_release);
    if (corrupt) {
        count_corrupt(self);
        PyErr_Format(CorruptFrame, "frame at sequence %llu failed its magic/len/crc32c check",
                     (unsigned long long)t);
    }
    return tup;
}

static PyObject *ring_pop(Ring *self, PyObject *unused) { return pop_impl(self, SHAPE_PLAIN); }
static PyObject *ring_pop_timed(Ring *self, PyObject *unused) {
    return pop_impl(self, SHAPE_TIMED);
}

static PyObject *drain_impl(Ring *self, PyObject *arg, int shape) {
    Py_ssize_t max = PyLong_AsSsize_t(arg);
    if ((max == -1 && PyErr_Occurred()) || ring_check(self) < 0) {
        return NULL;
    }
    uint64_t t = atomic_load_explicit(self->tail, memory_order_relaxed);
    uint64_t avail = readable(self, t);
    if (avail == 0 || max <= 0) {
        return PyList_New(0);
    }
    Py_ssize_t n = (uint64_t)max < avail ? max : (Py_ssize_t)avail;
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    uint64_t now = (shape == SHAPE_TIMED || self->fl != NULL) ? monotonic_ns() : 0;
    Py_ssize_t i = 0;
    for (; i < n; i++) {
        int corrupt;
        PyObject *tup = read_frame(self, t + (uint64_t)i, shape, now, &corrupt);
        if (tup == NULL) {
            if (!corrupt) {
                break;
            }
            count_corrupt(self); /* drain skips a corrupt frame; pop raises */
            continue;
        }
        int rc = PyList_Append(out, tup);
        Py_DECREF(tup);
        if (rc < 0) {
            i++; /* the frame was consumed */
            break;
        }
    }
    atomic_store_explicit(self->tail, t + (uint64_t)i, memory_order_release);
    if (PyErr_Occurred()) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *ring_drain(Ring *self, PyObject *arg) {
    return drain_impl(self, arg, SHAPE_PLAIN);
}
static PyObject *ring_drain_timed(Ring *self, PyObject *arg) {
    return drain_impl(self, arg, SHAPE_TIMED);
}
static PyObject *ring_drain_flagged(Ring *self, PyObject *arg) {
    return drain_impl(self, arg, SHAPE_FLAGS);
}

static PyObject *ring_wait(Ring *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "wait(spin_ns, timeout_ms)");
        return NULL;
    }
    long long spin_ns = PyLong_AsLongLong(args[0]);
    int timeout_ms = (int)PyLong_AsLong(args[1]);
    if (PyErr_Occurred() || ring_check(self) < 0) {
        return NULL;
    }
    uint64_t t = atomic_load_explicit(self->tail, memory_order_relaxed);
    uint64_t until = monotonic_ns() + (uint64_t)(spin_ns > 0 ? spin_ns : 0);
    do {
        for (int i = 0; i < SPIN_BATCH; i++) {
            if (readable(self, t)) {
                Py_RETURN_TRUE;
            }
            CPU_RELAX();
        }
    } while (monotonic_ns() < until);
    if (self->doorbell < 0 || timeout_ms == 0) {
        Py_RETURN_FALSE;
    }
    /* Dekker with publish(): raise the flag (seq_cst), then look at head once more. */
    atomic_store_explicit(self->waiting, 1, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
    if (!readable(self, t)) {
        struct pollfd pfd = {self->doorbell, POLLIN, 0};
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = poll(&pfd, 1, timeout_ms);
        if (rc > 0 && (pfd.revents & POLLIN)) {
            uint64_t v;
            ssize_t r = read(self->doorbell, &v, sizeof v); /* resets the eventfd counter */
            (void)r;
        }
        Py_END_ALLOW_THREADS
        if (self->fl != NULL) {
            fl_add(self->fl, F_RX_SYSCALLS, rc > 0 ? 2 : 1);
        }
        if (rc < 0 && errno != EINTR) {
            atomic_store_explicit(self->waiting, 0, memory_order_relaxed);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    atomic_store_explicit(self->waiting, 0, memory_order_relaxed);
    if (PyErr_CheckSignals() < 0) {
        return NULL;
    }
    return PyBool_FromLong(readable(self, t) > 0);
}

/* Producer (or, for a dead producer, the daemon): no frame follows this one. */
static PyObject *ring_seal(Ring *self, PyObject *unused) {
    if (ring_check(self) < 0) {
        return NULL;
    }
    atomic_store_explicit(self->sealed, 1, memory_order_release);
    if (self->doorbell >= 0) {
        uint64_t one = 1; /* wake a sleeping consumer so it sees the seal */
        ssize_t r = write(self->doorbell, &one, sizeof one);
        (void)r;
    }
    Py_RETURN_NONE;
}

/* Consumer: sealed and empty, so the ring can be freed. The seal is read first (acquire): every
 * head the producer stored before sealing is then visible to the re-read below. */
static PyObject *ring_finished(Ring *self, PyObject *unused) {
    if (ring_check(self) < 0) {
        return NULL;
    }
    if (!atomic_load_explicit(self->sealed, memory_order_acquire)) {
        Py_RETURN_FALSE;
    }
    uint64_t t = atomic_load_explicit(self->tail, memory_order_relaxed);
    self->seen_head = atomic_load_explicit(self->head, memory_order_acquire);
    return PyBool_FromLong(self->seen_head == t);
}

static PyObject *ring_pending(Ring *self, PyObject *unused) {
    if (ring_check(self) < 0) {
        return NULL;
    }
    uint64_t t = atomic_load_explicit(self->tail, memory_order_acquire);
    uint64_t h = atomic_load_explicit(self->head, memory_order_acquire);
    return PyLong_FromUnsignedLongLong(h - t);
}

static PyObject *ring_get_crc_errors(Ring *self, void *closure) {
    if (ring_check(self) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(atomic_load_explicit(self->crc_errors, memory_order_relaxed));
}

static PyObject *ring_get_u32(Ring *self, void *closure) {
    if (ring_check(self) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(*(uint32_t *)((char *)self + (size_t)closure));
}

static PyObject *ring_get_doorbell(Ring *self, void *closure) {
    return PyLong_FromLong(self->doorbell);
}

static PyObject *ring_get_sealed(Ring *self, void *closure) {
    if (ring_check(self) < 0) {
        return NULL;
    }
    return PyBool_FromLong(atomic_load_explicit(self->sealed, memory_order_acquire) != 0);
}

static PyMethodDef ring_methods[] = {
    {"push", (PyCFunction)(void (*)(void))ring_push, METH_FASTCALL, NULL},
    {"send_many", (PyCFunction)(void (*)(void))ring_send_many, METH_FASTCALL, NULL},
    {"pop", (PyCFunction)ring_pop, METH_NOARGS, NULL},
    {"pop_timed", (PyCFunction)ring_pop_timed, METH_NOARGS, NULL},
    {"drain", (PyCFunction)ring_drain, METH_O, NULL},
    {"drain_timed", (PyCFunction)ring_drain_timed, METH_O, NULL},
    {"drain_flagged", (PyCFunction)ring_drain_flagged, METH_O, NULL},
    {"seal", (PyCFunction)ring_seal, METH_NOARGS, NULL},
    {"finished", (PyCFunction)ring_finished, METH_NOARGS, NULL},
    {"wait", (PyCFunction)(void (*)(void))ring_wait, METH_FASTCALL, NULL},
    {"pending", (PyCFunction)ring_pending, METH_NOARGS, NULL},
    {"close", (PyCFunction)ring_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ring_getset[] = {
    {"crc_errors", (getter)ring_get_crc_errors, NULL, NULL, NULL},
    {"slot_count", (getter)ring_get_u32, NULL, NULL, (void *)offsetof(Ring, slot_count)},
    {"slot_size", (getter)ring_get_u32, NULL, NULL, (void *)offsetof(Ring, slot_size)},
    {"max_payload", (getter)ring_get_u32, NULL, NULL, (void *)offsetof(Ring, max_payload)},
    {"doorbell", (getter)ring_get_doorbell, NULL, NULL, NULL},
    {"sealed", (getter)ring_get_sealed, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rtt_fabric._ring.Ring",
    .tp_basicsize = sizeof(Ring),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An SPSC ring attached to a formatted shared mapping (see fabric/FRAME.md).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ring_init,
    .tp_dealloc = (destructor)ring_dealloc,
    .tp_methods = ring_methods,
    .tp_getset = ring_getset,
};

/* ---------------------------------------------------------------- wait_any ---- */

/* A subscriber's wait over all its inbound lanes: spin over the rings, then sleep on the shared
 * doorbell and the socket lanes' fds at once. Every ring's `waiting` flag is raised before the
 * last look (the same Dekker handshake as Ring.wait). True when something may be ready. */
static PyObject *mod_wait_any(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "wait_any(rings, doorbell, fds, spin_ns, timeout_ms)");
        return NULL;
    }
    int bell = (int)PyLong_AsLong(args[1]);
    long long spin_ns = PyLong_AsLongLong(args[3]);
    int timeout_ms = (int)PyLong_AsLong(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    PyObject *rseq = PySequence_Fast(args[0], "rings must be a sequence");
    if (rseq == NULL) {
        return NULL;
    }
    PyObject *fseq = PySequence_Fast(args[2], "fds must be a sequence");
    if (fseq == NULL) {
        Py_DECREF(rseq);
        return NULL;
    }
    Py_ssize_t nr = PySequence_Fast_GET_SIZE(rseq), nf = PySequence_Fast_GET_SIZE(fseq);
    PyObject **rs = PySequence_Fast_ITEMS(rseq);
    struct pollfd *pfds = PyMem_Calloc((size_t)nf + 1, sizeof *pfds);
    PyObject *result = NULL;
    int ready = 0;
    if (pfds == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < nr; i++) {
        if (!PyObject_TypeCheck(rs[i], &RingType) || ring_check((Ring *)rs[i]) < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "rings must hold attached Ring objects");
            }
            goto out;
        }
    }
    for (Py_ssize_t i = 0; i < nf; i++) {
        pfds[i + 1].fd = (int)PyLong_AsLong(PySequence_Fast_GET_ITEM(fseq, i));
        pfds[i + 1].events = POLLIN;
        if (PyErr_Occurred()) {
            goto out;
        }
    }
    uint64_t until = monotonic_ns() + (uint64_t)(spin_ns > 0 ? spin_ns : 0);
    do {
        for (int k = 0; k < SPIN_BATCH && !ready; k++) {
            for (Py_ssize_t i = 0; i < nr && !ready; i++) {
                Ring *r = (Ring *)rs[i];
                ready = readable(r, atomic_load_explicit(r->tail, memory_order_relaxed)) > 0;
            }
            CPU_RELAX();
        }
    } while (!ready && nr > 0 && monotonic_ns() < until);
    if (ready || timeout_ms == 0 || (bell < 0 && nf == 0)) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < nr; i++) {
        atomic_store_explicit(((Ring *)rs[i])->waiting, 1, memory_order_seq_cst);
    }
    atomic_thread_fence(memory_order_seq_cst);
    for (Py_ssize_t i = 0; i < nr && !ready; i++) {
        Ring *r = (Ring *)rs[i];
        ready = readable(r, atomic_load_explicit(r->tail, memory_order_relaxed)) > 0;
    }
    if (!ready) {
        pfds[0].fd = bell; /* poll() skips a negative fd */
        pfds[0].events = POLLIN;
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = poll(pfds, (nfds_t)nf + 1, timeout_ms);
        if (rc > 0 && bell >= 0 && (pfds[0].revents & POLLIN)) {
            uint64_t v;
            ssize_t r = read(bell, &v, sizeof v);
            (void)r;
        }
        Py_END_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < nr; i++) {
            Ring *r = (Ring *)rs[i];
            atomic_store_explicit(r->waiting, 0, memory_order_relaxed);
            if (r->fl != NULL) {
                fl_add(r->fl, F_RX_SYSCALLS, rc > 0 && (pfds[0].revents & POLLIN) ? 2 : 1);
            }
        }
        if (rc < 0 && errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto out;
        }
        for (Py_ssize_t i = 0; i <= nf && rc > 0 && !ready; i++) {
            ready = pfds[i].revents != 0;
        }
    } else {
        for (Py_ssize_t i = 0; i < nr; i++) {
            atomic_store_explicit(((Ring *)rs[i])->waiting, 0, memory_order_relaxed);
        }
    }
    if (PyErr_CheckSignals() < 0) {
        goto out;
    }
done:
    result = PyBool_FromLong(ready);
out:
    PyMem_Free(pfds);
    Py_DECREF(rseq);
    Py_DECREF(fseq);
    return result;
}

/* arm(rings) -> bool: for a caller that sleeps elsewhere (an asyncio reader on the doorbell).
 * Raises every ring's `waiting` flag, fences, and says whether a frame is already there (then the
 * caller must not sleep). disarm(rings) lowers the flags once awake. */
static PyObject *set_waiting(PyObject *arg, uint32_t value) {
    PyObject *rseq = PySequence_Fast(arg, "rings must be a sequence");
    if (rseq == NULL) {
        return NULL;
    }
    Py_ssize_t nr = PySequence_Fast_GET_SIZE(rseq);
    PyObject **rs = PySequence_Fast_ITEMS(rseq);
    for (Py_ssize_t i = 0; i < nr; i++) {
        if (!PyObject_TypeCheck(rs[i], &RingType) || ring_check((Ring *)rs[i]) < 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "rings must hold attached Ring objects");
            }
            Py_DECREF(rseq);
            return NULL;
        }
    }
    int ready = 0;
    for (Py_ssize_t i = 0; i < nr; i++) {
        atomic_store_explicit(((Ring *)rs[i])->waiting, value, memory_order_seq_cst);
    }
    if (value) {
        atomic_thread_fence(memory_order_seq_cst);
        for (Py_ssize_t i = 0; i < nr && !ready; i++) {
            Ring *r = (Ring *)rs[i];
            ready = readable(r, atomic_load_explicit(r->tail, memory_order_relaxed)) > 0;
        }
    }
    Py_DECREF(rseq);
    return PyBool_FromLong(ready);
}

static PyObject *mod_arm(PyObject *m, PyObject *arg) { return set_waiting(arg, 1); }
static PyObject *mod_disarm(PyObject *m, PyObject *arg) { return set_waiting(arg, 0); }

/* ---------------------------------------------------------------- Flight ---- */

/* A handle on a flight page for the lanes whose hot path is not a Ring (uds, tcp), and for the
 * rare counters (drops, marks, nacks, buffered) that the SDK keeps on any lane. */
typedef struct {
    PyObject_HEAD
    Py_buffer view;
    uint64_t *fl;
} Flight;

static int flight_init(Flight *self, PyObject *args, PyObject *kwds) {
    PyObject *buf;
    if (!PyArg_ParseTuple(args, "O", &buf)) {
        return -1;
    }
    if (self->fl != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "flight page already attached");
        return -1;
    }
    return fl_get(buf, &self->view, &self->fl);
}

static void flight_release(Flight *self) {
    if (self->fl != NULL) {
        self->fl = NULL;
        PyBuffer_Release(&self->view);
    }
}

static void flight_dealloc(Flight *self) {
    flight_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *flight_close(Flight *self, PyObject *unused) {
    flight_release(self);
    Py_RETURN_NONE;
}

static int flight_check(Flight *self) {
    if (self->fl == NULL) {
        PyErr_SetString(PyExc_ValueError, "flight page is closed");
        return -1;
    }
    return 0;
}

/* add(word, n): bump one counter (word index from FRAME.md). */
static PyObject *flight_add(Flight *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add(word, n)");
        return NULL;
    }
    long word = PyLong_AsLong(args[0]);
    unsigned long long n = PyLong_AsUnsignedLongLong(args[1]);
    if (PyErr_Occurred() || flight_check(self) < 0) {
        return NULL;
    }
    if (word < F_TX_FRAMES || word > F_LAST || word == F_BREAKER) {
        PyErr_SetString(PyExc_ValueError, "not a counter word");
        return NULL;
    }
    fl_add(self->fl, (int)word, n);
    Py_RETURN_NONE;
}

/* received(enq_ns, nbytes, flags): one frame off a socket lane, stamped by its sender. */
static PyObject *flight_received(Flight *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "received(enq_ns, nbytes, flags)");
        return NULL;
    }
    unsigned long long enq = PyLong_AsUnsignedLongLong(args[0]);
    unsigned long long nbytes = PyLong_AsUnsignedLongLong(args[1]);
    long flags = PyLong_AsLong(args[2]);
    if (PyErr_Occurred() || flight_check(self) < 0) {
        return NULL;
    }
    uint64_t now = monotonic_ns();
    fl_received(self->fl, now >= enq ? now - enq : 0, nbytes, (flags & FLAG_MARK) != 0);
    Py_RETURN_NONE;
}

/* sent(frames, nbytes, syscalls): a write of one or more frames to a socket lane. */
static PyObject *flight_sent(Flight *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "sent(frames, nbytes, syscalls)");
        return NULL;
    }
    unsigned long long frames = PyLong_AsUnsignedLongLong(args[0]);
    unsigned long long nbytes = PyLong_AsUnsignedLongLong(args[1]);
    unsigned long long calls = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred() || flight_check(self) < 0) {
        return NULL;
    }
    fl_add(self->fl, F_TX_FRAMES, frames);
    fl_add(self->fl, F_TX_BYTES, nbytes);
    fl_add(self->fl, F_TX_SYSCALLS, calls);
    Py_RETURN_NONE;
}

static PyObject *flight_get_breaker(Flight *self, void *closure) {
    if (flight_check(self) < 0) {
        return NULL;
    }
    _Atomic uint32_t *b = (_Atomic uint32_t *)((uint8_t *)self->fl + 8u * F_BREAKER);
    return PyLong_FromUnsignedLong(atomic_load_explicit(b, memory_order_relaxed));
}

static PyMethodDef flight_methods[] = {
    {"add", (PyCFunction)(void (*)(void))flight_add, METH_FASTCALL, NULL},
    {"received", (PyCFunction)(void (*)(void))flight_received, METH_FASTCALL, NULL},
    {"sent", (PyCFunction)(void (*)(void))flight_sent, METH_FASTCALL, NULL},
    {"close", (PyCFunction)flight_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef flight_getset[] = {
    {"breaker", (getter)flight_get_breaker, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FlightType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rtt_fabric._ring.Flight",
    .tp_basicsize = sizeof(Flight),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A writer's handle on a route's flight page (see fabric/FRAME.md).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)flight_init,
    .tp_dealloc = (destructor)flight_dealloc,
    .tp_methods = flight_methods,
    .tp_getset = flight_getset,
};

/* ---------------------------------------------------------------- Gate ---- */

/* The admission token bucket of one route's sender: `rate` tokens a second, at most `burst`
 * banked. Process-local, one per publisher lane, so it needs no atomics. */
typedef struct {
    PyObject_HEAD
    double rate;
    double burst;
    double tokens;
    uint64_t last_ns;
} Gate;

static int gate_init(Gate *self, PyObject *args, PyObject *kwds) {
    double rate, burst;
    if (!PyArg_ParseTuple(args, "dd", &rate, &burst)) {
        return -1;
    }
    if (!(rate > 0) || !(burst >= 1)) {
        PyErr_SetString(PyExc_ValueError, "a gate needs rate > 0 and burst >= 1");
        return -1;
    }
    self->rate = rate / 1e9;
    self->burst = burst;
    self->tokens = burst;
    self->last_ns = monotonic_ns();
    return 0;
}

/* take(): spend one token if there is one. */
static PyObject *gate_take(Gate *self, PyObject *unused) {
    uint64_t now = monotonic_ns();
    double tokens = self->tokens + (double)(now - self->last_ns) * self->rate;
    self->tokens = tokens < self->burst ? tokens : self->burst;
    self->last_ns = now;
    if (self->tokens >= 1.0) {
        self->tokens -= 1.0;
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

/* take_n(n): spend up to n whole tokens at once (a batch); returns how many. */
static PyObject *gate_take_n(Gate *self, PyObject *arg) {
    Py_ssize_t want = PyLong_AsSsize_t(arg);
    if (want == -1 && PyErr_Occurred()) {
        return NULL;
    }
    uint64_t now = monotonic_ns();
    double tokens = self->tokens + (double)(now - self->last_ns) * self->rate;
    self->tokens = tokens < self->burst ? tokens : self->burst;
    self->last_ns = now;
    Py_ssize_t got = (Py_ssize_t)self->tokens;
    got = want < got ? want : got;
    got = got < 0 ? 0 : got;
    self->tokens -= (double)got;
    return PyLong_FromSsize_t(got);
}

/* refund(n=1): give back tokens taken for frames that could not be written after all. */
static PyObject *gate_refund(Gate *self, PyObject *const *args, Py_ssize_t nargs) {
    double n = 1.0;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "refund(n=1)");
        return NULL;
    }
    if (nargs == 1) {
        n = (double)PyLong_AsSsize_t(args[0]);
        if (n == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
    }
    self->tokens = self->tokens + n < self->burst ? self->tokens + n : self->burst;
    Py_RETURN_NONE;
}

static PyObject *gate_get_tokens(Gate *self, void *closure) {
    return PyFloat_FromDouble(self->tokens);
}

static PyMethodDef gate_methods[] = {
    {"take", (PyCFunction)gate_take, METH_NOARGS, NULL},
    {"take_n", (PyCFunction)gate_take_n, METH_O, NULL},
    {"refund", (PyCFunction)(void (*)(void))gate_refund, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef gate_getset[] = {
    {"tokens", (getter)gate_get_tokens, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject GateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rtt_fabric._ring.Gate",
    .tp_basicsize = sizeof(Gate),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Gate(rate_per_s, burst): a token bucket for admission control.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)gate_init,
    .tp_methods = gate_methods,
    .tp_getset = gate_getset,
};

/* ---------------------------------------------------------------- stream frames ---- */
/* The uds and tcp lanes carry the same 32-byte-header frames back to back on a byte stream. */

/* encode(route_id, first_frame_id, payloads, flags, max_payload) -> bytes: one buffer, so a
 * batch goes out in one write. One clock read stamps the batch. */
static PyObject *mod_encode(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t route, first;
    uint16_t flags;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "encode(route_id, first_frame_id, payloads, flags, max)");
        return NULL;
    }
    Py_ssize_t max = PyLong_AsSsize_t(args[4]);
    if (parse_u32(args[0], &route) < 0 || parse_u32(args[1], &first) < 0
        || parse_flags(args, nargs, 3, &flags) < 0 || (max == -1 && PyErr_Occurred())) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(args[2], "payloads must be a sequence");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq), total = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < count; i++) {
        payload_t pl;
        if (payload_get(items[i], &pl) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
        payload_put(&pl);
        if (pl.n > max) {
            Py_DECREF(seq);
            return PyErr_Format(PyExc_ValueError, "payload %zd of %zd bytes exceeds max_payload %zd",
                                i, pl.n, max);
        }
        total += (Py_ssize_t)FRAME_HEADER + pl.n;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    uint8_t *w = (uint8_t *)PyBytes_AS_STRING(out);
    uint64_t now = monotonic_ns();
    for (Py_ssize_t i = 0; i < count; i++) {
        payload_t pl;
        if (payload_get(items[i], &pl) < 0) { /* cannot fail: checked above */
            Py_DECREF(seq);
            Py_DECREF(out);
            return NULL;
        }
        frame_hdr h = {FRAME_MAGIC, (uint16_t)(FLAG_TIMESTAMP | flags), 0, route,
                       first + (uint32_t)i, (uint32_t)pl.n, 0, now};
        h.crc32c = frame_crc(&h, pl.p, (size_t)pl.n);
        memcpy(w, &h, sizeof h);
        memcpy(w + FRAME_HEADER, pl.p, (size_t)pl.n);
        w += FRAME_HEADER + (size_t)pl.n;
        payload_put(&pl);
    }
    Py_DECREF(seq);
    return out;
}

/* decode(buffer, max_payload, flight) -> (frames, consumed, crc_errors): the whole frames at the
 * start of `buffer`, as (route_id, frame_id, payload, flags). A frame whose crc fails is skipped
 * and counted; the framing survives it. A bad magic or an oversize length means the stream is
 * no longer framed: CorruptFrame is raised (after counting) and the lane must be closed. */
static PyObject *mod_decode(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode(buffer, max_payload, flight)");
        return NULL;
    }
    Py_ssize_t max = PyLong_AsSsize_t(args[1]);
    if (max == -1 && PyErr_Occurred()) {
        return NULL;
    }
    uint64_t *fl = NULL;
    if (args[2] != Py_None) {
        if (!PyObject_TypeCheck(args[2], &FlightType) || ((Flight *)args[2])->fl == NULL) {
            PyErr_SetString(PyExc_TypeError, "flight must be an open Flight or None");
            return NULL;
        }
        fl = ((Flight *)args[2])->fl;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *frames = PyList_New(0);
    if (frames == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const uint8_t *p = (const uint8_t *)view.buf;
    Py_ssize_t at = 0, bad = 0;
    uint64_t now = monotonic_ns();
    while (view.len - at >= (Py_ssize_t)FRAME_HEADER) {
        frame_hdr h;
        memcpy(&h, p + at, sizeof h);
        if (h.magic != FRAME_MAGIC || (Py_ssize_t)h.len > max) {
            if (fl != NULL) {
                fl_add(fl, F_CRC_ERRORS, 1);
            }
            PyBuffer_Release(&view);
            Py_DECREF(frames);
            return PyErr_Format(CorruptFrame, "stream frame at byte %zd: bad %s", at,
                                h.magic != FRAME_MAGIC ? "magic" : "length");
        }
        if (view.len - at < (Py_ssize_t)(FRAME_HEADER + h.len)) {
            break;
        }
        const uint8_t *body = p + at + FRAME_HEADER;
        at += (Py_ssize_t)(FRAME_HEADER + h.len);
        if (frame_crc(&h, body, h.len) != h.crc32c) {
            bad++;
            if (fl != NULL) {
                fl_add(fl, F_CRC_ERRORS, 1);
            }
            continue;
        }
        if (fl != NULL) {
            fl_received(fl, (h.flags & FLAG_TIMESTAMP) && now >= h.enq_ns ? now - h.enq_ns : 0,
                        h.len, (h.flags & FLAG_MARK) != 0);
        }
        PyObject *tup = Py_BuildValue("(kky#i)", (unsigned long)h.route_id,
                                      (unsigned long)h.frame_id, (const char *)body,
                                      (Py_ssize_t)h.len, (int)(h.flags & FLAG_MASK));
        if (tup == NULL || PyList_Append(frames, tup) < 0) {
            Py_XDECREF(tup);
            PyBuffer_Release(&view);
            Py_DECREF(frames);
            return NULL;
        }
        Py_DECREF(tup);
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(Nnn)", frames, at, bad);
}

/* ---------------------------------------------------------------- module functions ---- */

static PyObject *mod_format_flight(PyObject *mod, PyObject *args) {
    PyObject *buf;
    unsigned int route_id;
    if (!PyArg_ParseTuple(args, "OI", &buf, &route_id)) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if ((size_t)view.len < FLIGHT_SIZE) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "buffer too small for a flight page");
        return NULL;
    }
    uint8_t *base = (uint8_t *)view.buf;
    memset(base, 0, FLIGHT_SIZE);
    uint16_t version = FLIGHT_VERSION, sub_bits = FLIGHT_SUB_BITS;
    uint32_t buckets = FLIGHT_BUCKETS, magic = FLIGHT_MAGIC, route = route_id;
    memcpy(base + 4, &version, 2);
    memcpy(base + 6, &sub_bits, 2);
    memcpy(base + 8, &buckets, 4);
    memcpy(base + 12, &route, 4);
    atomic_thread_fence(memory_order_release);
    memcpy(base, &magic, 4);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *mod_bucket(PyObject *mod, PyObject *arg) {
    unsigned long long v = PyLong_AsUnsignedLongLong(arg);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(fl_bucket(v));
}

static PyObject *mod_format(PyObject *mod, PyObject *args) {
    PyObject *buf;
    unsigned int count, size;
    if (!PyArg_ParseTuple(args, "OII", &buf, &count, &size)) {
        return NULL;
    }
    if (count == 0 || (count & (count - 1)) || size < 64 || size % 64) {
        PyErr_SetString(PyExc_ValueError,
                        "slot_count must be a power of two; slot_size a multiple of 64, >= 64");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if ((size_t)view.len < CONTROL_SIZE + (size_t)count * size) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "buffer too small for the ring");
        return NULL;
    }
    uint8_t *base = (uint8_t *)view.buf;
    memset(base, 0, CONTROL_SIZE);
    uint32_t magic = RING_MAGIC, c = count, s = size;
    uint16_t version = RING_VERSION, control = CONTROL_SIZE;
    memcpy(base + 4, &version, 2);
    memcpy(base + 6, &control, 2);
    memcpy(base + 8, &c, 4);
    memcpy(base + 12, &s, 4);
    /* The magic goes last, after a release fence: an attacher that sees it sees the geometry. */
    atomic_thread_fence(memory_order_release);
    memcpy(base, &magic, 4);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *crc_entry(PyObject *args, int which) {
    Py_buffer view;
    unsigned int value = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &view, &value)) {
        return NULL;
    }
    uint32_t c = ~(uint32_t)value;
    const uint8_t *p = (const uint8_t *)view.buf;
    size_t n = (size_t)view.len;
    if (which == 1) {
        c = crc_sw(c, p, n);
    }
#if defined(__x86_64__)
    else if (which == 2 && have_sse42) {
        c = crc_hw(c, p, n);
    }
#endif
    else if (which == 2) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_RuntimeError, "this CPU has no SSE4.2 crc32 instruction");
        return NULL;
    } else {
        c = crc_update(c, p, n);
    }
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(~c);
}

static PyObject *mod_crc32c(PyObject *m, PyObject *args) { return crc_entry(args, 0); }
static PyObject *mod_crc32c_sw(PyObject *m, PyObject *args) { return crc_entry(args, 1); }
static PyObject *mod_crc32c_hw(PyObject *m, PyObject *args) { return crc_entry(args, 2); }

static PyObject *mod_has_sse42(PyObject *m, PyObject *unused) { return PyBool_FromLong(have_sse42); }

static PyObject *mod_monotonic_ns(PyObject *m, PyObject *unused) {
    return PyLong_FromUnsignedLongLong(monotonic_ns());
}

static PyMethodDef mod_methods[] = {
    {"format", mod_format, METH_VARARGS, "format(buffer, slot_count, slot_size): write a control block."},
    {"format_flight", mod_format_flight, METH_VARARGS, "format_flight(buffer, route_id): zero a flight page."},
    {"bucket", mod_bucket, METH_O, "bucket(ns): the histogram bucket a latency falls in."},
    {"encode", (PyCFunction)(void (*)(void))mod_encode, METH_FASTCALL,
     "encode(route_id, first_frame_id, payloads, flags, max_payload): stream frames."},
    {"decode", (PyCFunction)(void (*)(void))mod_decode, METH_FASTCALL,
     "decode(buffer, max_payload, flight): (frames, consumed, crc_errors)."},
    {"arm", mod_arm, METH_O, "arm(rings): raise the waiting flags; True if a frame is ready."},
    {"disarm", mod_disarm, METH_O, "disarm(rings): lower the waiting flags."},
    {"wait_any", (PyCFunction)(void (*)(void))mod_wait_any, METH_FASTCALL,
     "wait_any(rings, doorbell, fds, spin_ns, timeout_ms): wait for any inbound lane."},
    {"crc32c", mod_crc32c, METH_VARARGS, "crc32c(data, value=0) with the fastest path available."},
    {"crc32c_sw", mod_crc32c_sw, METH_VARARGS, "crc32c(data, value=0), table-driven software."},
    {"crc32c_hw", mod_crc32c_hw, METH_VARARGS, "crc32c(data, value=0), SSE4.2; RuntimeError without it."},
    {"has_sse42", mod_has_sse42, METH_NOARGS, "Whether the hardware crc32c path is in use."},
    {"monotonic_ns", mod_monotonic_ns, METH_NOARGS, "CLOCK_MONOTONIC in ns, the frame timestamp clock."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ring_module = {
    PyModuleDef_HEAD_INIT, "rtt_fabric._ring", "SPSC shared-memory ring: the shm lane's hot path.",
    -1, mod_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ring(void) {
    sw_init();
#if defined(__x86_64__)
    __builtin_cpu_init();
    have_sse42 = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    shift_init();
#endif
    if (PyType_Ready(&RingType) < 0 || PyType_Ready(&FlightType) < 0
        || PyType_Ready(&GateType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&ring_module);
    if (m == NULL) {
        return NULL;
    }
    CorruptFrame = PyErr_NewException("rtt_fabric._ring.CorruptFrame", PyExc_ValueError, NULL);
    if (CorruptFrame == NULL || PyModule_AddObjectRef(m, "CorruptFrame", CorruptFrame) < 0
        || PyModule_AddObjectRef(m, "Ring", (PyObject *)&RingType) < 0
        || PyModule_AddObjectRef(m, "Flight", (PyObject *)&FlightType) < 0
        || PyModule_AddObjectRef(m, "Gate", (PyObject *)&GateType) < 0
        || PyModule_AddIntConstant(m, "FLAG_MARK", FLAG_MARK) < 0
        || PyModule_AddIntConstant(m, "FLIGHT_SIZE", FLIGHT_SIZE) < 0
        || PyModule_AddIntConstant(m, "FLIGHT_BUCKETS", FLIGHT_BUCKETS) < 0
        || PyModule_AddIntConstant(m, "FLIGHT_SUB_BITS", FLIGHT_SUB_BITS) < 0
        || PyModule_AddIntConstant(m, "FLIGHT_HIST", FLIGHT_HIST) < 0
        || PyModule_AddIntConstant(m, "CONTROL_SIZE", CONTROL_SIZE) < 0
        || PyModule_AddIntConstant(m, "FRAME_HEADER", FRAME_HEADER) < 0
        || PyModule_AddIntConstant(m, "RING_MAGIC", RING_MAGIC) < 0
        || PyModule_AddIntConstant(m, "FRAME_MAGIC", FRAME_MAGIC) < 0
        || PyModule_AddIntConstant(m, "VERSION", RING_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
