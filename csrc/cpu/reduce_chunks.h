// Deterministic column sums shared by the CPU kernels' backward passes (layer_norm's dweight/dbias,
// gelu_mlp's db_fc): each parallel task writes its partial sums into one row of a [chunks, n]
// buffer, and this adds the rows up in chunk order, so the result does not depend on the thread
// count or on which thread ran which chunk.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

namespace pygpt {

template <typename acc_t>
void reduce_chunks(const acc_t* part, acc_t* out, int64_t chunks, int64_t n) {
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) out[j] = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const acc_t* row = part + c * n;
      for (int64_t j = begin; j < end; ++j) out[j] += row[j];
    }
  });
}

}  // namespace pygpt
