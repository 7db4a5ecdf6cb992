/* bind_stats.c — the distribution functions knnd.stats (lua/knnd/stats.lua) builds confidence
 * intervals and tests on: Student's t and the binomial from GNU GSL's gsl_cdf, bound as the
 * internal table knnd._stats (knnd.stats re-exports them as t_quantile, t_cdf, t_sf, binom_cdf). */
#include <gsl/gsl_cdf.h>
#include <gsl/gsl_errno.h>
#include <math.h>

#include "bind.h"

/* GSL's default error handler aborts the process; the arguments are checked before every call,
 * and the handler is off during it so that nothing GSL finds can end a Lua session */
typedef double (*dist2_fn)(double, double);

static double call_gsl(dist2_fn fn, double a, double b) {
  gsl_error_handler_t *old = gsl_set_error_handler_off();
  double v = fn(a, b);
  gsl_set_error_handler(old);
  return v;
}

/* a number argument (an error naming it otherwise), not NaN */
static double check_arg(lua_State *L, int idx, const char *fname, const char *name) {
  if (lua_type(L, idx) != LUA_TNUMBER) {
    knnd_error(KNND_ERR_ARG, "argument %d '%s' expected a number, got %s", idx, name, luaL_typename(L, idx));
    knnd_lua_fail(L, fname);
  }
  double v = lua_tonumber(L, idx);
  if (isnan(v)) {
    knnd_error(KNND_ERR_NAN, "argument %d '%s' is NaN", idx, name);
    knnd_lua_fail(L, fname);
  }
  return v;
}

/* degrees of freedom: finite and > 0 (not necessarily whole: Welch's df are not) */
static double check_df(lua_State *L, int idx, const char *fname) {
  double df = check_arg(L, idx, fname, "df");
  if (!(df > 0) || isinf(df)) {
    knnd_error(KNND_ERR_ARG, "argument %d 'df' expected degrees of freedom > 0, got %g", idx, df);
    knnd_lua_fail(L, fname);
  }
  return df;
}

/* knnd._stats.t_quantile(p, df): x with P(T <= x) = p for Student's t with df degrees of freedom
 * (scipy.stats.t.ppf); p = 0 and 1 give -inf and inf */
static int l_t_quantile(lua_State *L) {
  static const char *fname = "stats.t_quantile";
  double p = check_arg(L, 1, fname, "p");
  double df = check_df(L, 2, fname);
  if (p < 0 || p > 1) {
    knnd_error(KNND_ERR_ARG, "argument 1 'p' expected a probability in [0, 1], got %g", p);
    return knnd_lua_fail(L, fname);
  }
  lua_pushnumber(L, call_gsl(gsl_cdf_tdist_Pinv, p, df));
  return 1;
}

/* knnd._stats.t_cdf(x, df) = P(T <= x) and t_sf(x, df) = P(T > x), the latter computed directly
 * (not 1 - cdf) so that small two-sided p-values keep their digits */
static int t_tail(lua_State *L, const char *fname, dist2_fn fn) {
  double x = check_arg(L, 1, fname, "x");
  double df = check_df(L, 2, fname);
  lua_pushnumber(L, call_gsl(fn, x, df));
  return 1;
}
static int l_t_cdf(lua_State *L) { return t_tail(L, "stats.t_cdf", gsl_cdf_tdist_P); }
static int l_t_sf(lua_State *L) { return t_tail(L, "stats.t_sf", gsl_cdf_tdist_Q); }

/* knnd._stats.binom_cdf(k, n, p) = P(X <= k) for X ~ Binomial(n, p) (scipy.stats.binom.cdf) */
static int l_binom_cdf(lua_State *L) {
  static const char *fname = "stats.binom_cdf";
  double k = check_arg(L, 1, fname, "k"), n = check_arg(L, 2, fname, "n"), p = check_arg(L, 3, fname, "p");
  if (n < 0 || n != floor(n) || n > 4294967295.0) {
    knnd_error(KNND_ERR_ARG, "argument 2 'n' expected a whole number of trials >= 0, got %g", n);
    return knnd_lua_fail(L, fname);
  }
  if (k != floor(k)) {
    knnd_error(KNND_ERR_ARG, "argument 1 'k' expected a whole number of successes, got %g", k);
    return knnd_lua_fail(L, fname);
  }
  if (p < 0 || p > 1) {
    knnd_error(KNND_ERR_ARG, "argument 3 'p' expected a probability in [0, 1], got %g", p);
    return knnd_lua_fail(L, fname);
  }
  double v;
  if (k < 0) {
    v = 0;
  } else if (k >= n) {
    v = 1;
  } else {
    gsl_error_handler_t *old = gsl_set_error_handler_off();
    v = gsl_cdf_binomial_P((unsigned int)k, p, (unsigned int)n);
    gsl_set_error_handler(old);
  }
  lua_pushnumber(L, v);
  return 1;
}

void knnd_lua_open_stats(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"t_quantile", l_t_quantile}, {"t_cdf", l_t_cdf}, {"t_sf", l_t_sf}, {"binom_cdf", l_binom_cdf}, {NULL, NULL}};
  luaL_newlib(L, fns);
  lua_setfield(L, -2, "_stats");
}
