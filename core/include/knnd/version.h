/* version.h — what this knnd is and what it was built with (for `knnd version`). */
#ifndef KNND_VERSION_H
#define KNND_VERSION_H

#ifdef __cplusplus
extern "C" {
#endif

const char *knnd_version(void);
/* number of build facts, and fact i as a key and a value (static strings valid until exit) */
int knnd_build_info_count(void);
void knnd_build_info(int i, const char **key, const char **value);

#ifdef __cplusplus
}
#endif
#endif
