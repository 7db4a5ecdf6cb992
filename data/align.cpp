/* align.cpp — knnd_align_ecc: ECC image alignment through OpenCV (findTransformECC, warpAffine).
 *
 * The edit pairs of the local-manipulation model (lua/knnd/edit.lua) paste a retrieved image into
 * an area of another after aligning it there. OpenCV's ECC (Evangelidis & Psarakis, "Parametric
 * Image Alignment Using Enhanced Correlation Coefficient Maximization", PAMI 2008) does the
 * estimation; this file only converts tensors to cv::Mat and back and turns OpenCV's exceptions
 * into knnd errors — no exception crosses into C. */
#include <cmath>
#include <cstring>
#include <new>

#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/video/tracking.hpp>

#include "knnd/data.h"
#include "knnd/error.h"

namespace {

const char *const OP = "align_ecc";

knnd_device cpu_device() {
  knnd_device d;
  d.type = KNND_DEVICE_CPU;
  d.index = 0;
  return d;
}

/* f32 [C,H,W] on the CPU, checked; a contiguous reference in *out */
knnd_status image_arg(const knnd_tensor *t, const char *name, knnd_tensor **out) {
  if (!t) return knnd_error(KNND_ERR_ARG, "%s: argument '%s' is NULL", OP, name);
  if (t->dtype != KNND_F32 || t->ndim != 3)
    return knnd_error(KNND_ERR_ARG, "%s: argument '%s' expected an f32 [C,H,W] image, got %s with %d dims", OP, name,
                      knnd_dtype_name(t->dtype), t->ndim);
  if (t->storage && t->storage->device.type != KNND_DEVICE_CPU)
    return knnd_error(KNND_ERR_DEVICE, "%s: argument '%s' is on a GPU (align CPU images)", OP, name);
  if (t->shape[0] < 1 || t->shape[1] < 2 || t->shape[2] < 2)
    return knnd_error(KNND_ERR_SHAPE, "%s: argument '%s' is %lldx%lldx%lld (expected at least 1x2x2)", OP, name,
                      (long long)t->shape[0], (long long)t->shape[1], (long long)t->shape[2]);
  return knnd_contiguous(const_cast<knnd_tensor *>(t), out);
}

/* the channel mean of a contiguous [C,H,W] image as an H x W CV_32F matrix */
cv::Mat channel_mean(const knnd_tensor *t) {
  int c = (int)t->shape[0], h = (int)t->shape[1], w = (int)t->shape[2];
  const float *p = static_cast<const float *>(knnd_tensor_data(t));
  cv::Mat m(h, w, CV_32F, cv::Scalar(0));
  for (int k = 0; k < c; k++)
    for (int y = 0; y < h; y++) {
      float *row = m.ptr<float>(y);
      const float *src = p + ((size_t)k * h + y) * w;
      for (int x = 0; x < w; x++) row[x] += src[x] / (float)c;
    }
  return m;
}

bool finite_image(const knnd_tensor *t) {
  const float *p = static_cast<const float *>(knnd_tensor_data(t));
  int64_t n = t->shape[0] * t->shape[1] * t->shape[2];
  for (int64_t i = 0; i < n; i++)
    if (!std::isfinite(p[i])) return false;
  return true;
}

/* moving warped into target's frame, channel by channel; outside moving: target */
knnd_status warp_into(const knnd_tensor *target, const knnd_tensor *moving, const cv::Mat &W, knnd_tensor **aligned) {
  int c = (int)target->shape[0], h = (int)target->shape[1], w = (int)target->shape[2];
  int mh = (int)moving->shape[1], mw = (int)moving->shape[2];
  knnd_tensor *out = NULL;
  int64_t shape[3] = {c, h, w};
  KNND_TRY(knnd_tensor_empty(KNND_F32, 3, shape, cpu_device(), &out));
  const float *tp = static_cast<const float *>(knnd_tensor_data(target));
  const float *mp = static_cast<const float *>(knnd_tensor_data(moving));
  float *op = static_cast<float *>(knnd_tensor_data(out));
  const int flags = cv::INTER_LINEAR | cv::WARP_INVERSE_MAP;
  cv::Mat ones(mh, mw, CV_32F, cv::Scalar(1)), valid;
  cv::warpAffine(ones, valid, W, cv::Size(w, h), flags, cv::BORDER_CONSTANT, cv::Scalar(0));
  for (int k = 0; k < c; k++) {
    cv::Mat src(mh, mw, CV_32F, const_cast<float *>(mp + (size_t)k * mh * mw)), dst;
    cv::warpAffine(src, dst, W, cv::Size(w, h), flags, cv::BORDER_CONSTANT, cv::Scalar(0));
    for (int y = 0; y < h; y++) {
      const float *d = dst.ptr<float>(y), *v = valid.ptr<float>(y);
      const float *t = tp + ((size_t)k * h + y) * w;
      float *o = op + ((size_t)k * h + y) * w;
      /* dst already carries the weight v of moving's pixels (zeros outside) */
      for (int x = 0; x < w; x++) o[x] = d[x] + (1.0f - v[x]) * t[x];
    }
  }
  *aligned = out;
  return KNND_OK;
}

knnd_status align(const knnd_tensor *target, const knnd_tensor *moving, const knnd_align_opts *opts, double warp[6],
                  double *cc, bool *converged, knnd_tensor **aligned) {
  int motion;
  switch (opts ? opts->motion : (int)KNND_ALIGN_AFFINE) {
  case KNND_ALIGN_TRANSLATION: motion = cv::MOTION_TRANSLATION; break;
  case KNND_ALIGN_EUCLIDEAN: motion = cv::MOTION_EUCLIDEAN; break;
  case KNND_ALIGN_AFFINE: motion = cv::MOTION_AFFINE; break;
  default: return knnd_error(KNND_ERR_ARG, "%s: unknown motion %d (expected translation, euclidean or affine)", OP,
                             opts->motion);
  }
  int iters = opts && opts->iterations > 0 ? opts->iterations : 100;
  double eps = opts && opts->eps > 0 ? opts->eps : 1e-5;
  int gauss = opts && opts->gauss_filter > 0 ? opts->gauss_filter : 5;
  if (gauss % 2 == 0) return knnd_error(KNND_ERR_ARG, "%s: option 'gauss_filter' is %d (expected an odd size)", OP, gauss);
  if (!warp) return knnd_error(KNND_ERR_ARG, "%s: argument 'warp' is NULL", OP);
  for (int i = 0; i < 6; i++)
    if (!std::isfinite(warp[i])) return knnd_error(KNND_ERR_NAN, "%s: the initial warp holds %g", OP, warp[i]);
  if (target->shape[0] != moving->shape[0] || target->shape[1] != moving->shape[1] ||
      target->shape[2] != moving->shape[2])
    return knnd_error(KNND_ERR_SHAPE, "%s: target is %lldx%lldx%lld but moving is %lldx%lldx%lld (resize first)", OP,
                      (long long)target->shape[0], (long long)target->shape[1], (long long)target->shape[2],
                      (long long)moving->shape[0], (long long)moving->shape[1], (long long)moving->shape[2]);
  if (!finite_image(target) || !finite_image(moving))
    return knnd_error(KNND_ERR_NAN, "%s: an image holds NaN or infinity", OP);

  cv::Mat W(2, 3, CV_32F);
  for (int i = 0; i < 6; i++) W.at<float>(i / 3, i % 3) = (float)warp[i];
  cv::Mat T = channel_mean(target), M = channel_mean(moving);
  double rho = 0;
  bool ok = true;
  cv::Mat est = W.clone();
  try {
    rho = cv::findTransformECC(T, M, est, motion,
                               cv::TermCriteria(cv::TermCriteria::COUNT | cv::TermCriteria::EPS, iters, eps),
                               cv::noArray(), gauss);
  } catch (const cv::Exception &) {
    /* OpenCV throws when the correlation cannot improve (flat or unrelated images) or the
     * Hessian is singular: not an error of the caller, the pair keeps its initial warp */
    ok = false;
  }
  if (ok && !std::isfinite(rho)) ok = false;
  if (ok) {
    for (int i = 0; i < 6; i++)
      if (!std::isfinite(est.at<float>(i / 3, i % 3))) ok = false;
  }
  if (ok) {
    W = est;
  } else {
    rho = cv::computeECC(T, M);
    if (!std::isfinite(rho)) rho = 0;
  }
  for (int i = 0; i < 6; i++) warp[i] = W.at<float>(i / 3, i % 3);
  if (cc) *cc = rho;
  if (converged) *converged = ok;
  if (aligned) return warp_into(target, moving, W, aligned);
  return KNND_OK;
}

} // namespace

extern "C" __attribute__((visibility("default"))) knnd_status knnd_align_ecc(const knnd_tensor *target, const knnd_tensor *moving,
                                      const knnd_align_opts *opts, double warp[6], double *cc, bool *converged,
                                      knnd_tensor **aligned) {
  knnd_tensor *t = NULL, *m = NULL;
  knnd_status st = image_arg(target, "target", &t);
  if (st == KNND_OK) st = image_arg(moving, "moving", &m);
  if (st == KNND_OK) {
    try {
      st = align(t, m, opts, warp, cc, converged, aligned);
    } catch (const std::bad_alloc &) {
      st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", OP);
    } catch (const cv::Exception &e) {
      st = knnd_error(KNND_ERR_ARG, "%s: OpenCV: %s", OP, e.what());
    } catch (...) {
      st = knnd_error(KNND_ERR_STATE, "%s: unexpected C++ exception", OP);
    }
  }
  knnd_tensor_release(t);
  knnd_tensor_release(m);
  return st;
}

extern "C" __attribute__((visibility("default"))) knnd_status knnd_warp_affine(const knnd_tensor *moving,
                                                                                const double warp[6],
                                                                                const knnd_tensor *fill,
                                                                                knnd_tensor **out) {
  static const char *const op = "warp_affine";
  if (!warp || !out) return knnd_error(KNND_ERR_ARG, "%s: argument 'warp' or 'out' is NULL", op);
  for (int i = 0; i < 6; i++)
    if (!std::isfinite(warp[i])) return knnd_error(KNND_ERR_NAN, "%s: the warp holds %g", op, warp[i]);
  knnd_tensor *m = NULL, *f = NULL;
  knnd_status st = image_arg(moving, "moving", &m);
  if (st == KNND_OK) st = image_arg(fill, "fill", &f);
  if (st == KNND_OK && m->shape[0] != f->shape[0])
    st = knnd_error(KNND_ERR_SHAPE, "%s: moving has %lld channels but fill has %lld", op, (long long)m->shape[0],
                    (long long)f->shape[0]);
  if (st == KNND_OK) {
    try {
      cv::Mat W(2, 3, CV_32F);
      for (int i = 0; i < 6; i++) W.at<float>(i / 3, i % 3) = (float)warp[i];
      st = warp_into(f, m, W, out);
    } catch (const std::bad_alloc &) {
      st = knnd_error(KNND_ERR_NOMEM, "%s: out of memory", op);
    } catch (const cv::Exception &e) {
      st = knnd_error(KNND_ERR_ARG, "%s: OpenCV: %s", op, e.what());
    } catch (...) {
      st = knnd_error(KNND_ERR_STATE, "%s: unexpected C++ exception", op);
    }
  }
  knnd_tensor_release(m);
  knnd_tensor_release(f);
  return st;
}
