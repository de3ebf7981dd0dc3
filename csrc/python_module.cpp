// Makes the compiled library importable as the Python module shufflenet_ops._C; importing it
// runs the static TORCH_LIBRARY registrations. (The CMake build for C++ users omits this file.)
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
