"""Builds shufflenet_ops with its C++ extension (shufflenet_ops._C).

    pip install --no-build-isolation -e .[test]

--no-build-isolation compiles against the torch already installed (a torch extension must
match the torch it runs with).
"""

import glob
import os
import re

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def version() -> str:
    """``__version__`` of shufflenet_ops/__init__.py, the one place the version is written
    (read as text: importing the package here would need the extension being built)."""
    with open(os.path.join(ROOT, "shufflenet_ops", "__init__.py"), encoding="utf-8") as f:
        match = re.search(r'^__version__ = "([^"]+)"', f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError("no `__version__ = \"...\"` line in shufflenet_ops/__init__.py")
    return match.group(1)


def extension():
    sources = ["csrc/ops.cpp", "csrc/python_module.cpp", *sorted(glob.glob("csrc/cpu/*.cpp", root_dir=ROOT))]
    # -fopenmp: at::parallel_for is a header template that needs it to run in parallel; the
    # extension links the libgomp that torch already loaded (same soname), so one thread pool.
    return CppExtension(
        name="shufflenet_ops._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args=["-O3", "-fopenmp", "-std=c++17"],
        extra_link_args=["-fopenmp"],
    )


setup(
    name="shufflenet_ops",
    version=version(),
    description="Grouped 1x1 convolution + channel shuffle fused into one pass (C++ CPU, Triton GPU)",
    packages=find_packages(include=["shufflenet_ops", "shufflenet_ops.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4"],
    extras_require={
        "test": ["pytest", "hypothesis", "expecttest", "numpy", "einops", "onnx", "onnxscript", "onnxruntime"],
        "triton": ["triton"],
        "bench": ["tqdm", "matplotlib", "numpy", "scikit-learn", "onnx", "onnxscript", "onnxruntime", "openvino"],
    },
    entry_points={"console_scripts": ["shufflenet-bench=shufflenet_ops.bench.__main__:main"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
