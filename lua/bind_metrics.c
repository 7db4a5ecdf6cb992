/* bind_metrics.c — the knnd.metrics table: the C side of evaluation (eval/). The Lua layer
 * (lua/knnd/eval.lua: extractors, image sets, the zero-shot protocol) is built on it. Also
 * knnd.sha256(bytes): identities of weights (extractor ids) from OpenSSL's SHA-256. */
#include <openssl/evp.h>

#include "bind.h"

/* knnd.sha256(s) -> the hex SHA-256 of the string s */
static int l_sha256(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  if (!EVP_Digest(s, len, md, &md_len, EVP_sha256(), NULL)) return luaL_error(L, "knnd.sha256: OpenSSL failed");
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  static const char digits[] = "0123456789abcdef";
  for (unsigned int i = 0; i < md_len; i++) {
    hex[2 * i] = digits[md[i] >> 4];
    hex[2 * i + 1] = digits[md[i] & 15];
  }
  lua_pushlstring(L, hex, 2 * (size_t)md_len);
  return 1;
}

void knnd_lua_open_metrics(lua_State *L) {
  lua_pushcfunction(L, l_sha256);
  lua_setfield(L, -2, "sha256");
  lua_newtable(L);
  knnd_lua_metrics_inception(L);
  knnd_lua_metrics_stats(L);
  lua_setfield(L, -2, "metrics");
}
