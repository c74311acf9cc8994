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
#define FLAG_TIMESTAMP 0x0001u

/* Control block offsets: one cache line each for the geometry, head, tail and the doorbell. */
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
    uint64_t mask;
    uint32_t slot_count;
    uint32_t slot_size;
    uint32_t max_payload;
    uint64_t seen_tail; /* producer's last view of tail: re-read only when the ring looks full */
    uint64_t seen_head; /* consumer's last view of head: re-read only when the ring looks empty */
    int doorbell;
} Ring;

static int ring_check(Ring *self) {
    if (!self->attached) {
        PyErr_SetString(PyExc_ValueError, "ring is closed");
        return -1;
    }
    return 0;
}

static int ring_init(Ring *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"buffer", "doorbell", NULL};
    PyObject *buf;
    int doorbell = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$i", kwlist, &buf, &doorbell)) {
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
    self->attached = 1;
    self->slots = base + CONTROL_SIZE;
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
                        const uint8_t *p, size_t n, uint64_t now) {
    uint8_t *slot = self->slots + (size_t)(seq & self->mask) * self->slot_size;
    frame_hdr h = {FRAME_MAGIC, FLAG_TIMESTAMP, 0, route, frame, (uint32_t)n, 0, now};
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

static void publish(Ring *self, uint64_t h) {
    atomic_store_explicit(self->head, h, memory_order_release);
    if (self->doorbell >= 0) {
        /* Dekker with the consumer's wait(): store head, full fence, then read its flag. */
        atomic_thread_fence(memory_order_seq_cst);
        if (atomic_load_explicit(self->waiting, memory_order_relaxed)) {
            uint64_t one = 1;
            ssize_t r = write(self->doorbell, &one, sizeof one);
            (void)r; /* EAGAIN means the counter is already non-zero: the consumer will wake */
        }
    }
}

static PyObject *ring_push(Ring *self, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t route, frame;
    payload_t pl;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "push(route_id, frame_id, payload)");
        return NULL;
    }
    if (ring_check(self) < 0 || parse_u32(args[0], &route) < 0 || parse_u32(args[1], &frame) < 0
        || payload_get(args[2], &pl) < 0) {
        return NULL;
    }
    if ((size_t)pl.n > self->max_payload) {
        payload_put(&pl);
        return PyErr_Format(PyExc_ValueError, "payload of %zd bytes exceeds max_payload %u",
                            pl.n, self->max_payload);
    }
    uint64_t h = atomic_load_explicit(self->head, memory_order_relaxed);
    if (free_slots(self, h, 1) == 0) {
        payload_put(&pl);
        Py_RETURN_FALSE;
    }
    write_frame(self, h, route, frame, pl.p, (size_t)pl.n, monotonic_ns());
    payload_put(&pl);
    publish(self, h + 1);
    Py_RETURN_TRUE;
}

static PyObject *ring_send_many(Ring *self, PyObject *const *args, Py_ssize_t nargs) {
    uint32_t route, first;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send_many(route_id, first_frame_id, payloads)");
        return NULL;
    }
    if (ring_check(self) < 0 || parse_u32(args[0], &route) < 0 || parse_u32(args[1], &first) < 0) {
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
            return PyErr_Format(PyExc_ValueError, "payload %zd of %zd bytes exceeds max_payload %u",
                                i, pl.n, self->max_payload);
        }
    }
    uint64_t h = atomic_load_explicit(self->head, memory_order_relaxed);
    uint64_t room = free_slots(self, h, (uint64_t)total);
    Py_ssize_t n = (uint64_t)total < room ? total : (Py_ssize_t)room;
    uint64_t now = monotonic_ns();
    for (Py_ssize_t i = 0; i < n; i++) {
        payload_t pl;
        if (payload_get(items[i], &pl) < 0) { /* cannot fail: checked above */
            Py_DECREF(seq);
            return NULL;
        }
        write_frame(self, h + (uint64_t)i, route, first + (uint32_t)i, pl.p, (size_t)pl.n, now);
        payload_put(&pl);
    }
    Py_DECREF(seq);
    if (n > 0) {
        publish(self, h + (uint64_t)n);
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
static PyObject *read_frame(Ring *self, uint64_t t, int timed, uint64_t now, int *corrupt) {
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
    PyObject *tup = PyTuple_New(timed ? 4 : 3);
    if (tup == NULL) {
        Py_DECREF(payload);
        return NULL;
    }
    PyTuple_SET_ITEM(tup, 0, PyLong_FromUnsignedLong(h.route_id));
    PyTuple_SET_ITEM(tup, 1, PyLong_FromUnsignedLong(h.frame_id));
    PyTuple_SET_ITEM(tup, 2, payload);
    if (timed) {
        long long lat = (h.flags & FLAG_TIMESTAMP) ? (long long)(now - h.enq_ns) : -1;
        PyTuple_SET_ITEM(tup, 3, PyLong_FromLongLong(lat));
    }
    return tup;
}

static void count_corrupt(Ring *self) {
    /* The consumer is the only writer, so a relaxed read-modify-store is enough. */
    uint64_t v = atomic_load_explicit(self->crc_errors, memory_order_relaxed);
    atomic_store_explicit(self->crc_errors, v + 1, memory_order_relaxed);
}

static PyObject *pop_impl(Ring *self, int timed) {
    if (ring_check(self) < 0) {
        return NULL;
    }
    uint64_t t = atomic_load_explicit(self->tail, memory_order_relaxed);
    if (!readable(self, t)) {
        Py_RETURN_NONE;
    }
    int corrupt;
    PyObject *tup = read_frame(self, t, timed, timed ? monotonic_ns() : 0, &corrupt);
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

static PyObject *ring_pop(Ring *self, PyObject *unused) { return pop_impl(self, 0); }
static PyObject *ring_pop_timed(Ring *self, PyObject *unused) { return pop_impl(self, 1); }

static PyObject *drain_impl(Ring *self, PyObject *arg, int timed) {
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
    uint64_t now = timed ? monotonic_ns() : 0;
    Py_ssize_t i = 0;
    for (; i < n; i++) {
        int corrupt;
        PyObject *tup = read_frame(self, t + (uint64_t)i, timed, now, &corrupt);
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

static PyObject *ring_drain(Ring *self, PyObject *arg) { return drain_impl(self, arg, 0); }
static PyObject *ring_drain_timed(Ring *self, PyObject *arg) { return drain_impl(self, arg, 1); }

static PyObject *ring_wait(Ring *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "wait(spin, timeout_ms)");
        return NULL;
    }
    long spin = PyLong_AsLong(args[0]);
    int timeout_ms = (int)PyLong_AsLong(args[1]);
    if (PyErr_Occurred() || ring_check(self) < 0) {
        return NULL;
    }
    uint64_t t = atomic_load_explicit(self->tail, memory_order_relaxed);
    for (long i = 0; i <= spin; i++) {
        if (readable(self, t)) {
            Py_RETURN_TRUE;
        }
        CPU_RELAX();
    }
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

static PyMethodDef ring_methods[] = {
    {"push", (PyCFunction)(void (*)(void))ring_push, METH_FASTCALL, NULL},
    {"send_many", (PyCFunction)(void (*)(void))ring_send_many, METH_FASTCALL, NULL},
    {"pop", (PyCFunction)ring_pop, METH_NOARGS, NULL},
    {"pop_timed", (PyCFunction)ring_pop_timed, METH_NOARGS, NULL},
    {"drain", (PyCFunction)ring_drain, METH_O, NULL},
    {"drain_timed", (PyCFunction)ring_drain_timed, METH_O, NULL},
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

/* ---------------------------------------------------------------- module functions ---- */

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
    if (PyType_Ready(&RingType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&ring_module);
    if (m == NULL) {
        return NULL;
    }
    CorruptFrame = PyErr_NewException("rtt_fabric._ring.CorruptFrame", PyExc_ValueError, NULL);
    if (CorruptFrame == NULL || PyModule_AddObjectRef(m, "CorruptFrame", CorruptFrame) < 0
        || PyModule_AddObjectRef(m, "Ring", (PyObject *)&RingType) < 0
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
