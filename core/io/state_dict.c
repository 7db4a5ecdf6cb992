/* state_dict.c — an ordered name -> tensor map (what models, optimizers and files exchange). */
#include <stdlib.h>
#include <string.h>

#include "io/io_internal.h"
#include "tensor/internal.h"

knnd_state_dict *knnd_state_dict_new(void) { return calloc(1, sizeof(knnd_state_dict)); }

void knnd_state_dict_free(knnd_state_dict *sd) {
  if (!sd) return;
  for (int i = 0; i < sd->n; i++) {
    free(sd->names[i]);
    knnd_tensor_release(sd->tensors[i]);
  }
  free(sd->names);
  free(sd->tensors);
  free(sd);
}

static int find(const knnd_state_dict *sd, const char *name) {
  for (int i = 0; i < sd->n; i++)
    if (strcmp(sd->names[i], name) == 0) return i;
  return -1;
}

knnd_status knnd_state_dict_set(knnd_state_dict *sd, const char *name, knnd_tensor *t) {
  if (!sd) return knnd_error(KNND_ERR_ARG, "state_dict_set: argument 'sd' is NULL (expected a state dict)");
  if (!name || !*name)
    return knnd_error(KNND_ERR_ARG, "state_dict_set: argument 'name' is %s (expected a non-empty string)",
                      name ? "empty" : "NULL");
  KNND_TRY(knnd_check_tensor(t, "state_dict_set", "t"));
  int i = find(sd, name);
  if (i >= 0) {
    knnd_tensor_retain(t);
    knnd_tensor_release(sd->tensors[i]);
    sd->tensors[i] = t;
    return KNND_OK;
  }
  if (sd->n == sd->cap) {
    int cap = sd->cap ? sd->cap * 2 : 16;
    char **names = realloc(sd->names, (size_t)cap * sizeof *names);
    if (!names) return knnd_error(KNND_ERR_NOMEM, "state_dict_set: out of memory");
    sd->names = names;
    knnd_tensor **tensors = realloc(sd->tensors, (size_t)cap * sizeof *tensors);
    if (!tensors) return knnd_error(KNND_ERR_NOMEM, "state_dict_set: out of memory");
    sd->tensors = tensors;
    sd->cap = cap;
  }
  char *copy = strdup(name);
  if (!copy) return knnd_error(KNND_ERR_NOMEM, "state_dict_set: out of memory");
  sd->names[sd->n] = copy;
  sd->tensors[sd->n] = knnd_tensor_retain(t);
  sd->n++;
  return KNND_OK;
}

knnd_tensor *knnd_state_dict_get(const knnd_state_dict *sd, const char *name) {
  if (!sd || !name) return NULL;
  int i = find(sd, name);
  return i >= 0 ? sd->tensors[i] : NULL;
}

knnd_status knnd_io_host_contig(const knnd_tensor *t, const char *op, const char *arg, knnd_tensor **out) {
  KNND_TRY(knnd_check_tensor(t, op, arg));
  knnd_tensor *host;
  /* to_device and contig only read t; their signatures take non-const for autograd's sake */
  KNND_TRY(knnd_to_device((knnd_tensor *)t, KNND_CPU, &host));
  knnd_status st = knnd_contig(host, out);
  knnd_tensor_release(host);
  if (st) knnd_error_context("%s: argument '%s': ", op, arg);
  return st;
}
