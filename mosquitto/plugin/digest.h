/* CONNECT cache keys: HMAC-SHA256 under a random per-process key, so that the
 * broker's memory holds no password and no unkeyed hash of one. */
#ifndef CR_DIGEST_H
#define CR_DIGEST_H

#include <stddef.h>

#define CR_DIGEST_LEN 32
#define CR_DIGEST_KEY_LEN 32

/* 0, or -1 when the random source fails (then the plugin refuses to load). */
int cr_digest_new_key(unsigned char key[CR_DIGEST_KEY_LEN]);

/* 0, or -1 when the random source fails. */
int cr_random_bytes(unsigned char *buf, size_t len);

/* HMAC(key, username \0 password \0 clientid); 0, or -1 on failure. */
int cr_connect_digest(const unsigned char key[CR_DIGEST_KEY_LEN], const char *username, const char *password,
		const char *clientid, unsigned char out[CR_DIGEST_LEN]);

#endif
