/* Atomic loads, stores and read-modify-writes on 4- and 8-byte words of a buffer.
 *
 * Why C: CPython's struct.pack_into zero-fills and then writes, so a reader on another core can observe
 * a half-written cursor (measured on this machine).  These use C11 acquire/release ordering: a store
 * publishes everything written before it; a load sees everything published before the matching store.
 */
#include "native.h"
#include <stdatomic.h>


static int get_view(PyObject *obj, Py_buffer *view, int writable)
{
    return PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE);
}

static PyObject *atomic_load_u64(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *obj;
    Py_ssize_t offset;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "On:atomic_load_u64", &obj, &offset) || get_view(obj, &view, 0) < 0)
        return NULL;
    _Atomic uint64_t *p = ipc_buffer_at(&view, offset, 8);
    uint64_t v = p ? atomic_load_explicit(p, memory_order_acquire) : 0;
    PyBuffer_Release(&view);
    return p ? PyLong_FromUnsignedLongLong(v) : NULL;
}

static PyObject *atomic_store_u64(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *obj;
    Py_ssize_t offset;
    unsigned long long value;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OnK:atomic_store_u64", &obj, &offset, &value) ||
        get_view(obj, &view, 1) < 0)
        return NULL;
    _Atomic uint64_t *p = ipc_buffer_at(&view, offset, 8);
    if (p)
        atomic_store_explicit(p, (uint64_t)value, memory_order_release);
    PyBuffer_Release(&view);
    if (!p)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *atomic_add_u64(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *obj;
    Py_ssize_t offset;
    long long delta;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OnL:atomic_add_u64", &obj, &offset, &delta) ||
        get_view(obj, &view, 1) < 0)
        return NULL;
    _Atomic uint64_t *p = ipc_buffer_at(&view, offset, 8);
    uint64_t old = p ? atomic_fetch_add_explicit(p, (uint64_t)delta, memory_order_acq_rel) : 0;
    PyBuffer_Release(&view);
    return p ? PyLong_FromUnsignedLongLong(old) : NULL;
}

static PyObject *atomic_cas_u64(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *obj;
    Py_ssize_t offset;
    unsigned long long expected, desired;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OnKK:atomic_cas_u64", &obj, &offset, &expected, &desired) ||
        get_view(obj, &view, 1) < 0)
        return NULL;
    _Atomic uint64_t *p = ipc_buffer_at(&view, offset, 8);
    int ok = 0;
    if (p) {
        uint64_t e = (uint64_t)expected;
        ok = atomic_compare_exchange_strong_explicit(p, &e, (uint64_t)desired, memory_order_acq_rel,
                                                     memory_order_acquire);
    }
    PyBuffer_Release(&view);
    if (!p)
        return NULL;
    return PyBool_FromLong(ok);
}

static PyObject *atomic_load_u32(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *obj;
    Py_ssize_t offset;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "On:atomic_load_u32", &obj, &offset) || get_view(obj, &view, 0) < 0)
        return NULL;
    _Atomic uint32_t *p = ipc_buffer_at(&view, offset, 4);
    uint32_t v = p ? atomic_load_explicit(p, memory_order_acquire) : 0;
    PyBuffer_Release(&view);
    return p ? PyLong_FromUnsignedLong(v) : NULL;
}

static PyObject *atomic_store_u32(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *obj;
    Py_ssize_t offset;
    unsigned int value;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "OnI:atomic_store_u32", &obj, &offset, &value) ||
        get_view(obj, &view, 1) < 0)
        return NULL;
    _Atomic uint32_t *p = ipc_buffer_at(&view, offset, 4);
    if (p)
        atomic_store_explicit(p, (uint32_t)value, memory_order_release);
    PyBuffer_Release(&view);
    if (!p)
        return NULL;
    Py_RETURN_NONE;
}

PyMethodDef ipc_atomics_methods[] = {
    {"atomic_load_u64", atomic_load_u64, METH_VARARGS,
     "atomic_load_u64(buf, offset) -> int: acquire-load of the 8-byte word at offset."},
    {"atomic_store_u64", atomic_store_u64, METH_VARARGS,
     "atomic_store_u64(buf, offset, value): release-store of the 8-byte word at offset."},
    {"atomic_add_u64", atomic_add_u64, METH_VARARGS,
     "atomic_add_u64(buf, offset, delta) -> int: fetch-and-add (acq_rel); returns the old value."},
    {"atomic_cas_u64", atomic_cas_u64, METH_VARARGS,
     "atomic_cas_u64(buf, offset, expected, desired) -> bool: compare-and-exchange (acq_rel)."},
    {"atomic_load_u32", atomic_load_u32, METH_VARARGS,
     "atomic_load_u32(buf, offset) -> int: acquire-load of the 4-byte word at offset."},
    {"atomic_store_u32", atomic_store_u32, METH_VARARGS,
     "atomic_store_u32(buf, offset, value): release-store of the 4-byte word at offset."},
    {NULL, NULL, 0, NULL},
};
