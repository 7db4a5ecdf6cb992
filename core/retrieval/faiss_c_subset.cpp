// faiss_c_subset.cpp — the part of FAISS's C API (faiss/c_api/*.h) that knnd calls, implemented
// against libfaiss for systems whose FAISS ships the C API headers but no compiled libfaiss_c
// (Debian's libfaiss-dev). Built only when CMake finds no libfaiss_c.
//
// Semantics follow the upstream c_api: every call returns 0 or a negative FaissErrorCode and
// faiss_get_last_error() gives the message of the exception behind it. No exception may cross
// into C: every entry point catches everything, bad_alloc and unknown exceptions included.
#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include <faiss/AutoTune.h>
#include <faiss/Index.h>
#include <faiss/IndexFlat.h>
#include <faiss/impl/FaissException.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>

#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>

namespace {

// The message behind the last failed call on this thread (upstream keeps an exception_ptr and
// rethrows it to read what(); a string gives the same answer without the rethrow).
thread_local std::string last_error;

// Run f, turning any exception into the C API's status codes.
template <class F>
int guarded(F &&f) noexcept {
  try {
    f();
    return 0;
  } catch (const faiss::FaissException &e) {
    try { last_error = e.what(); } catch (...) {}
    return FAISS_EXCEPT;
  } catch (const std::bad_alloc &) {
    try { last_error = "out of memory (std::bad_alloc)"; } catch (...) {}
    return STD_EXCEPT;
  } catch (const std::exception &e) {
    try { last_error = e.what(); } catch (...) {}
    return STD_EXCEPT;
  } catch (...) {
    try { last_error = "unknown exception"; } catch (...) {}
    return UNKNOWN_EXCEPT;
  }
}

faiss::Index *cpp(FaissIndex *index) { return reinterpret_cast<faiss::Index *>(index); }
const faiss::Index *cpp(const FaissIndex *index) { return reinterpret_cast<const faiss::Index *>(index); }

// FAISS does not check its pointer arguments; the C face reports them as errors instead.
void require(bool ok, const char *what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace

extern "C" {

const char *faiss_get_last_error() { return last_error.c_str(); }

int faiss_index_factory(FaissIndex **p_index, int d, const char *description, FaissMetricType metric) {
  return guarded([&] {
    require(p_index && description, "faiss_index_factory: NULL argument");
    *p_index = nullptr;
    *p_index = reinterpret_cast<FaissIndex *>(
        faiss::index_factory(d, description, static_cast<faiss::MetricType>(metric)));
  });
}

void faiss_Index_free(FaissIndex *obj) { delete cpp(obj); }

int faiss_Index_d(const FaissIndex *obj) { return static_cast<int>(cpp(obj)->d); }
int faiss_Index_is_trained(const FaissIndex *obj) { return cpp(obj)->is_trained ? 1 : 0; }
idx_t faiss_Index_ntotal(const FaissIndex *obj) { return cpp(obj)->ntotal; }
FaissMetricType faiss_Index_metric_type(const FaissIndex *obj) {
  return static_cast<FaissMetricType>(cpp(obj)->metric_type);
}

FaissIndexFlat *faiss_IndexFlat_cast(FaissIndex *index) {
  return reinterpret_cast<FaissIndexFlat *>(dynamic_cast<faiss::IndexFlat *>(cpp(index)));
}

void faiss_IndexFlat_xb(FaissIndexFlat *index, float **p_xb, size_t *p_size) {
  auto *flat = reinterpret_cast<faiss::IndexFlat *>(index);
  *p_xb = flat->get_xb();
  if (p_size) *p_size = flat->codes.size() / sizeof(float);
}

int faiss_Index_train(FaissIndex *index, idx_t n, const float *x) {
  return guarded([&] {
    require(index && (x || n == 0), "faiss_Index_train: NULL argument");
    cpp(index)->train(n, x);
  });
}

int faiss_Index_add(FaissIndex *index, idx_t n, const float *x) {
  return guarded([&] {
    require(index && (x || n == 0), "faiss_Index_add: NULL argument");
    cpp(index)->add(n, x);
  });
}

int faiss_Index_add_with_ids(FaissIndex *index, idx_t n, const float *x, const idx_t *xids) {
  return guarded([&] {
    require(index && ((x && xids) || n == 0), "faiss_Index_add_with_ids: NULL argument");
    cpp(index)->add_with_ids(n, x, xids);
  });
}

int faiss_Index_search(const FaissIndex *index, idx_t n, const float *x, idx_t k, float *distances,
                       idx_t *labels) {
  return guarded([&] {
    require(index && ((x && distances && labels) || n == 0), "faiss_Index_search: NULL argument");
    cpp(index)->search(n, x, k, distances, labels);
  });
}

int faiss_write_index(const FaissIndex *idx, FILE *f) {
  return guarded([&] {
    require(idx && f, "faiss_write_index: NULL argument");
    faiss::write_index(cpp(idx), f);
  });
}

int faiss_read_index(FILE *f, int io_flags, FaissIndex **p_out) {
  return guarded([&] {
    require(f && p_out, "faiss_read_index: NULL argument");
    *p_out = nullptr;
    *p_out = reinterpret_cast<FaissIndex *>(faiss::read_index(f, io_flags));
  });
}

int faiss_ParameterSpace_new(FaissParameterSpace **space) {
  return guarded([&] {
    require(space, "faiss_ParameterSpace_new: NULL argument");
    *space = nullptr;
    *space = reinterpret_cast<FaissParameterSpace *>(new faiss::ParameterSpace());
  });
}

void faiss_ParameterSpace_free(FaissParameterSpace *space) {
  delete reinterpret_cast<faiss::ParameterSpace *>(space);
}

int faiss_ParameterSpace_set_index_parameter(const FaissParameterSpace *space, FaissIndex *index,
                                             const char *name, double value) {
  return guarded([&] {
    require(space && index && name, "faiss_ParameterSpace_set_index_parameter: NULL argument");
    reinterpret_cast<const faiss::ParameterSpace *>(space)->set_index_parameter(cpp(index), name, value);
  });
}

}  // extern "C"
