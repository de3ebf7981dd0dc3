// Makes the compiled library importable as the Python module shufflenet_ops._C; importing it
// runs the static TORCH_LIBRARY registrations. (The CMake build for C++ users omits this file.)
#include <Python.h>

#include "cpu/small_gemm.h"

namespace {

// Which GEMM the fp32 CPU kernels run here: recorded by the benchmark, checked by the tests.
PyObject* cpu_gemm(PyObject*, PyObject*) {
  return PyUnicode_FromString(shufflenet_ops::cpu::use_small_gemm() ? "small_gemm" : "blas");
}

PyMethodDef methods[] = {
    {"cpu_gemm", cpu_gemm, METH_NOARGS,
     "'small_gemm' (the AVX-512 kernels) or 'blas': what the fp32 CPU kernels use on this machine."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
