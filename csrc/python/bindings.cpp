// Python module `pygpt._C` (setup.py build only; CMake builds the op library
// without this file). Importing it loads the shared object, which runs the
// TORCH_LIBRARY registrations, so `torch.ops.pygpt.*` become available.
#include "../registry.h"

#include <torch/extension.h>

namespace py = pybind11;

namespace {

py::dict build_info_dict() {
  const pygpt::BuildInfo info = pygpt::build_info();
  py::dict d;
  d["cuda"] = info.cuda;
  d["cuda_version"] = info.cuda ? py::object(py::str(info.cuda_version)) : py::object(py::none());
  py::list archs;
  for (const auto& a : info.cuda_archs) archs.append(a);
  d["cuda_archs"] = archs;
  d["cublaslt"] = info.cublaslt;
  d["compiler"] = info.compiler;
  d["torch"] = info.torch;
  py::dict kernels;
  py::list cpu, cuda;
  for (const auto& k : info.cpu_kernels) cpu.append(k);
  for (const auto& k : info.cuda_kernels) cuda.append(k);
  kernels["cpu"] = cpu;
  kernels["cuda"] = cuda;
  d["kernels"] = kernels;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  // An extension built against one torch may load into another (the same source
  // tree is shared by every venv with an editable install) and then misbehave:
  // refuse to import instead, so pygpt falls back to its pure-PyTorch backends.
  const std::string built = pygpt::build_info().torch;
  const std::string running = py::str(py::module_::import("torch").attr("__version__"));
  if (built != running) {
    throw py::import_error("pygpt._C was built against torch " + built + " but torch " +
                           running +
                           " is imported; rebuild it in this environment with "
                           "`pip install --no-build-isolation -e .`");
  }
  m.doc() = "pygpt C++/CUDA extension: registers torch.ops.pygpt.*";
  m.def("build_info", &build_info_dict,
        "Dict describing this build: cuda, cuda_version, cuda_archs, compiler, "
        "torch, kernels (ops with a real hand-written kernel, per device).");
}
