// Makes the compiled library importable as the Python module shufflenet_ops._C; importing it
// runs the static TORCH_LIBRARY registrations. (The CMake build for C++ users omits this file.)
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>

#include <cstdint>
#include <exception>

#include "cpu/small_gemm.h"

namespace {

// Which GEMM the fp32 CPU kernels run here: recorded by the benchmark, checked by the tests.
PyObject* cpu_gemm(PyObject*, PyObject*) {
  return PyUnicode_FromString(shufflenet_ops::cpu::use_small_gemm() ? "small_gemm" : "blas");
}

// The state of each tensor a cached derived value was computed from (TensorCache in
// shufflenet_ops/modules/batchnorm.py): identity, version counter (bumped by in-place
// updates), data pointer (swapped by `.data =`), dtype and device, four ints per tensor; None
// if one is an inference tensor (no version counter: not cacheable). One call instead of
// four attribute reads per tensor: a fused unit checks 15 tensors on every forward, which
// in Python cost more than the batch-1 op it feeds.
PyObject* tensor_stamps(PyObject*, PyObject* sequence) {
  PyObject* fast = PySequence_Fast(sequence, "tensor_stamps expects a sequence of tensors");
  if (fast == nullptr) return nullptr;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  PyObject** items = PySequence_Fast_ITEMS(fast);
  PyObject* stamps = PyTuple_New(4 * n);
  if (stamps == nullptr) {
    Py_DECREF(fast);
    return nullptr;
  }
  try {
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (!THPVariable_Check(items[i])) {
        PyErr_Format(PyExc_TypeError, "tensor_stamps expects tensors, got %s", Py_TYPE(items[i])->tp_name);
        Py_DECREF(stamps);
        Py_DECREF(fast);
        return nullptr;
      }
      const at::Tensor& t = THPVariable_Unpack(items[i]);
      if (t.is_inference()) {
        Py_DECREF(stamps);
        Py_DECREF(fast);
        Py_RETURN_NONE;
      }
      const void* data = t.has_storage() ? t.const_data_ptr() : nullptr;
      const int64_t kind = (static_cast<int64_t>(t.scalar_type()) << 24) |
                           (static_cast<int64_t>(t.device().type()) << 8) | (t.device().index() + 1);
      PyTuple_SET_ITEM(stamps, 4 * i, PyLong_FromVoidPtr(items[i]));
      PyTuple_SET_ITEM(stamps, 4 * i + 1, PyLong_FromLongLong(static_cast<long long>(t._version())));
      PyTuple_SET_ITEM(stamps, 4 * i + 2, PyLong_FromVoidPtr(const_cast<void*>(data)));
      PyTuple_SET_ITEM(stamps, 4 * i + 3, PyLong_FromLongLong(kind));
    }
  } catch (const std::exception& error) {
    Py_DECREF(stamps);
    Py_DECREF(fast);
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
  Py_DECREF(fast);
  return stamps;
}

PyMethodDef methods[] = {
    {"cpu_gemm", cpu_gemm, METH_NOARGS,
     "'small_gemm' (the AVX-512 kernels) or 'blas': what the fp32 CPU kernels use on this machine."},
    {"tensor_stamps", tensor_stamps, METH_O,
     "tensor_stamps(tensors) -> tuple of ints, or None if one is an inference tensor: the "
     "identity, version, data pointer, dtype and device of each (for caches of derived weights)."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
