/* fastloss._fastcall -- the compiled entry point of the common small call.
 *
 * A call with host NumPy arrays of the common kind (C-contiguous, native
 * float32/float64, no weight) spends more time in Python than in its kernel
 * at training-step sizes.  These functions do that call's argument checks,
 * its output allocation and its kernel call in C, with the kernels of
 * fastloss._native (their addresses come from ``init``: one copy of the
 * kernels and of their thread pool).
 *
 * The contract with the Python layer: a function either returns the call's
 * result, bit for bit what the Python path returns, or NotImplemented, having
 * written nothing the caller can see; the Python path then runs the call and
 * raises its usual errors (bad labels, values out of range, strided or
 * non-NumPy arrays, unusual dtypes or shapes).  No Python exception leaves
 * these functions but for a wrong number of arguments.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#include "fastloss.h"

typedef int (*ew_fn)(int, int, fl_ew_args *);
typedef int (*row_fn)(int, int, fl_row_args *);
typedef int64_t (*outside_fn)(int, const void *, int64_t, double, double);
typedef int64_t (*pm1_fn)(int, const void *, int64_t);

static ew_fn run_elementwise;
static row_fn run_rowwise;
static outside_fn find_outside;
static pm1_fn find_not_pm1;
/* numpy.ndarray, numpy.empty, the dtypes and scalar types of float32, float64 */
static PyObject *ndarray_type, *np_empty, *dtypes[2], *scalars[2];
static PyObject *s_mean, *s_sum, *s_none;

enum { RED_MEAN, RED_SUM, RED_NONE };
/* how "mean" divides a row-wise loss: fl_row_args.mean_by 1 / 2, or by the rows */
enum { MEAN_WEIGHT, MEAN_COUNT, MEAN_ROWS };
/* the value checks of an elementwise loss */
enum { CHECK_NONE, CHECK_UNIT, CHECK_PM1 };

static int reduction_of(PyObject *r)
{
    if (r == s_mean) return RED_MEAN;   /* interned literals: the common case */
    if (r == s_sum) return RED_SUM;
    if (r == s_none) return RED_NONE;
    if (!PyUnicode_CheckExact(r)) return -1;
    if (PyUnicode_Compare(r, s_mean) == 0) return RED_MEAN;
    if (PyUnicode_Compare(r, s_sum) == 0) return RED_SUM;
    if (PyUnicode_Compare(r, s_none) == 0) return RED_NONE;
    return -1;
}

/* A C-contiguous ndarray's buffer (not a subclass): 0 on success, -1 if not
 * one (no exception left set). */
static int contiguous_view(PyObject *obj, Py_buffer *view)
{
    if (Py_TYPE(obj) != (PyTypeObject *)ndarray_type)
        return -1;
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_Clear();
        return -1;
    }
    return 0;
}

/* 0 float32, 1 float64 (native byte order), -1 anything else */
static int float_type(const Py_buffer *v)
{
    const char *f = v->format;
    if (f[0] == 'f' && f[1] == 0 && v->itemsize == 4) return 0;
    if (f[0] == 'd' && f[1] == 0 && v->itemsize == 8) return 1;
    return -1;
}

/* fl_row_args.label_type: 0 int32, 1 int64, 2 uint8; -1 anything else */
static int label_type(const Py_buffer *v)
{
    const char *f = v->format;
    if (f[0] == 0 || f[1] != 0) return -1;
    if ((f[0] == 'l' || f[0] == 'q') && v->itemsize == 8) return 1;
    if ((f[0] == 'i' || (f[0] == 'l' && sizeof(long) == 4)) && v->itemsize == 4) return 0;
    if (f[0] == 'B' && v->itemsize == 1) return 2;
    return -1;
}

/* numpy.empty(shape, dtype) and a pointer to its memory, or NULL (no exception set) */
static PyObject *new_array(const Py_ssize_t *shape, int ndim, int dtype, void **data)
{
    PyObject *dims = PyTuple_New(ndim);
    if (!dims) goto fail;
    for (int i = 0; i < ndim; i++) {
        PyObject *d = PyLong_FromSsize_t(shape[i]);
        if (!d) { Py_DECREF(dims); goto fail; }
        PyTuple_SET_ITEM(dims, i, d);
    }
    PyObject *argv[2] = {dims, dtypes[dtype]};
    PyObject *array = PyObject_Vectorcall(np_empty, argv, 2, NULL);
    Py_DECREF(dims);
    if (!array) goto fail;
    Py_buffer view;
    if (PyObject_GetBuffer(array, &view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) != 0) {
        Py_DECREF(array);
        goto fail;
    }
    *data = view.buf;
    PyBuffer_Release(&view);   /* the array keeps its memory */
    return array;
fail:
    PyErr_Clear();
    return NULL;
}

static PyObject *reduced_value(double total, int dtype)
{
    PyObject *f = PyFloat_FromDouble(total);
    if (!f) return NULL;
    PyObject *v = PyObject_CallOneArg(scalars[dtype], f);   /* numpy.float32(total) */
    Py_DECREF(f);
    return v;
}

/* The end of every call, after its buffers are released: the result -- out (for
 * "none") or the dtype's scalar of total, with grad when asked for -- if the kernel
 * ran (ok), else NotImplemented.  Steals out and grad (either may be NULL). */
static PyObject *finish(int ok, double total, int dtype, PyObject *out, PyObject *grad)
{
    PyObject *value = NULL;
    if (ok)
        value = out ? out : reduced_value(total, dtype);
    if (value != out)
        Py_XDECREF(out);
    if (value && grad) {
        PyObject *pair = PyTuple_Pack(2, value, grad);
        Py_DECREF(value);
        value = pair;
    }
    Py_XDECREF(grad);
    if (!value) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    return value;
}

static int argument_count(Py_ssize_t nargs, Py_ssize_t want, const char *fn)
{
    if (nargs == want) return 0;
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", fn, want, nargs);
    return -1;
}

/* elementwise(loss, check, input, target, reduction, return_grad, p0, p1):
 * fl_elementwise on two C-contiguous arrays of one float dtype and shape. */
static PyObject *fc_elementwise(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (argument_count(nargs, 8, "elementwise")) return NULL;
    const int loss = (int)PyLong_AsLong(args[0]), check = (int)PyLong_AsLong(args[1]);
    const int reduction = reduction_of(args[4]);
    PyObject *return_grad = args[5];
    const double p0 = PyFloat_AsDouble(args[6]), p1 = PyFloat_AsDouble(args[7]);
    if (PyErr_Occurred() || reduction < 0 || (return_grad != Py_True && return_grad != Py_False)) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    Py_buffer xv, yv;
    if (contiguous_view(args[2], &xv)) Py_RETURN_NOTIMPLEMENTED;
    if (contiguous_view(args[3], &yv)) { PyBuffer_Release(&xv); Py_RETURN_NOTIMPLEMENTED; }
    PyObject *out = NULL, *grad = NULL;
    int ok = 0;
    double total = 0.0;
    const int dtype = float_type(&xv);
    const int64_t n = (int64_t)(xv.len / (xv.itemsize ? xv.itemsize : 1));
    if (dtype < 0 || float_type(&yv) != dtype || xv.ndim != yv.ndim || n == 0 ||
        memcmp(xv.shape, yv.shape, (size_t)xv.ndim * sizeof(Py_ssize_t)) != 0)
        goto done;
    if ((check == CHECK_UNIT && (find_outside(dtype, xv.buf, n, 0.0, 1.0) >= 0 ||
                                 find_outside(dtype, yv.buf, n, 0.0, 1.0) >= 0)) ||
        (check == CHECK_PM1 && find_not_pm1(dtype, yv.buf, n) >= 0))
        goto done;   /* the Python path names the element */
    fl_ew_args a;
    memset(&a, 0, sizeof a);
    a.input = xv.buf;
    a.target = yv.buf;
    a.n = n;
    a.p0 = p0;
    a.p1 = p1;
    const double scale = reduction == RED_MEAN ? 1.0 / (double)n : 1.0;
    a.grad_scale = scale;
    a.want_total = reduction != RED_NONE;
    if (reduction == RED_NONE && !(out = new_array(xv.shape, xv.ndim, dtype, &a.out)))
        goto done;
    if (return_grad == Py_True && !(grad = new_array(xv.shape, xv.ndim, dtype, &a.grad)))
        goto done;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = run_elementwise(loss, dtype, &a);
    Py_END_ALLOW_THREADS
    ok = rc == 0;
    total = a.total * scale;
done:
    PyBuffer_Release(&xv);
    PyBuffer_Release(&yv);
    return finish(ok, total, dtype, out, grad);
}

/* rowwise(loss, mean, input, target, reduction, return_grad, ignore_index,
 *         smoothing, z_loss, p0, p1):
 * fl_rowwise on (N, C) scores and N class indices, no weight, the labels
 * checked in the kernel's call. */
static PyObject *fc_rowwise(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (argument_count(nargs, 11, "rowwise")) return NULL;
    const int loss = (int)PyLong_AsLong(args[0]), mean = (int)PyLong_AsLong(args[1]);
    const int reduction = reduction_of(args[4]);
    PyObject *return_grad = args[5];
    int overflow = 0;
    const long long ignore_index = PyLong_AsLongLongAndOverflow(args[6], &overflow);
    const double smoothing = PyFloat_AsDouble(args[7]), z_loss = PyFloat_AsDouble(args[8]);
    const double p0 = PyFloat_AsDouble(args[9]), p1 = PyFloat_AsDouble(args[10]);
    if (PyErr_Occurred() || overflow || reduction < 0 ||
        (return_grad != Py_True && return_grad != Py_False))
    {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    Py_buffer xv, tv;
    if (contiguous_view(args[2], &xv)) Py_RETURN_NOTIMPLEMENTED;
    if (contiguous_view(args[3], &tv)) { PyBuffer_Release(&xv); Py_RETURN_NOTIMPLEMENTED; }
    PyObject *out = NULL, *grad = NULL;
    int ok = 0;
    double total = 0.0;
    const int dtype = float_type(&xv), labels = label_type(&tv);
    if (dtype < 0 || labels < 0 || xv.ndim != 2 || tv.ndim != 1 || xv.shape[0] < 1 ||
        xv.shape[1] < 1 || tv.shape[0] != xv.shape[0])
        goto done;
    const int64_t rows = xv.shape[0];
    fl_row_args a;
    memset(&a, 0, sizeof a);
    a.input = xv.buf;
    a.target = tv.buf;
    a.label_type = labels;
    a.n = rows;
    a.classes = xv.shape[1];
    a.inner = 1;
    a.ignore_index = ignore_index;
    a.smoothing = smoothing;
    a.z_loss = z_loss;
    a.p0 = p0;
    a.p1 = p1;
    a.want_total = 1;
    a.check_labels = 1;
    double scale = 1.0;
    if (reduction == RED_MEAN) {
        if (mean == MEAN_ROWS)
            scale = 1.0 / (double)rows;
        else
            a.mean_by = mean == MEAN_WEIGHT ? 1 : 2;
    }
    a.grad_scale = scale;
    if (reduction == RED_NONE && !(out = new_array(tv.shape, 1, dtype, &a.out)))
        goto done;
    if (return_grad == Py_True && !(grad = new_array(xv.shape, 2, dtype, &a.grad)))
        goto done;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = run_rowwise(loss, dtype, &a);
    Py_END_ALLOW_THREADS
    ok = rc == 0 && a.bad < 0;   /* a bad label: the Python path names it */
    total = a.total * scale;
done:
    PyBuffer_Release(&xv);
    PyBuffer_Release(&tv);
    return finish(ok, total, dtype, out, grad);
}

static void *address(PyObject *number)
{
    return PyLong_AsVoidPtr(number);
}

/* init(elementwise, rowwise, find_outside, find_not_pm1, ndarray, empty,
 *      dtype32, dtype64, float32, float64): the kernels' addresses (from the
 * cffi module) and the NumPy objects the calls use. */
static PyObject *fc_init(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (argument_count(nargs, 10, "init")) return NULL;
    run_elementwise = (ew_fn)address(args[0]);
    run_rowwise = (row_fn)address(args[1]);
    find_outside = (outside_fn)address(args[2]);
    find_not_pm1 = (pm1_fn)address(args[3]);
    if (PyErr_Occurred()) return NULL;
    PyObject **keep[6] = {&ndarray_type, &np_empty, &dtypes[0], &dtypes[1], &scalars[0],
                          &scalars[1]};
    for (int i = 0; i < 6; i++) {
        Py_INCREF(args[4 + i]);
        Py_XSETREF(*keep[i], args[4 + i]);
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"init", (PyCFunction)(void (*)(void))fc_init, METH_FASTCALL, "Set the kernels and NumPy objects."},
    {"elementwise", (PyCFunction)(void (*)(void))fc_elementwise, METH_FASTCALL,
     "An elementwise loss call of the common kind, or NotImplemented."},
    {"rowwise", (PyCFunction)(void (*)(void))fc_rowwise, METH_FASTCALL,
     "A row-wise loss call of the common kind, or NotImplemented."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastcall",
    "The compiled entry point of fastloss's common small calls (see csrc/py/fastcall.c).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastcall(void)
{
    s_mean = PyUnicode_InternFromString("mean");
    s_sum = PyUnicode_InternFromString("sum");
    s_none = PyUnicode_InternFromString("none");
    if (!s_mean || !s_sum || !s_none) return NULL;
    return PyModule_Create(&module);
}
