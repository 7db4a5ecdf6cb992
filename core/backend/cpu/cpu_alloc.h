/* cpu_alloc.h — host memory for CPU tensor storages (the allocator behind knnd_tensor_empty); internal. */
#ifndef KNND_CPU_ALLOC_H
#define KNND_CPU_ALLOC_H

#include <stddef.h>

/* nbytes of 64-byte aligned memory (never NULL for 0 bytes; NULL when memory is out).
 * knnd_cpu_free takes the same nbytes back. Thread-safe. */
void *knnd_cpu_alloc(size_t nbytes);
void knnd_cpu_free(void *p, size_t nbytes);

#endif
