/* A CONNECT's client certificate (SPEC §14): what the plugin sends for it and
 * how it keys the grant it caches. Pure: no broker calls, so the C unit tests
 * reach it (checks.c hands it mosquitto_client_certificate's copy). */
#ifndef CR_CERTIFICATE_H
#define CR_CERTIFICATE_H

#include <stddef.h>

#include <cjson/cJSON.h>
#include <openssl/x509.h>

#include "cache.h"
#include "digest.h"

#define CR_CERT_FINGERPRINT_LEN (2 * 32) /* SHA-256 in lowercase hex */

/* The SHA-256 of `cert`'s DER in lowercase hex and its subject CN: 0, or -1
 * when either cannot be read (no CN, a CN longer than cn_size - 1). */
int cr_certificate_identity(X509 *cert, char fingerprint[CR_CERT_FINGERPRINT_LEN + 1], char *cn, size_t cn_size);

/* The body of POST /mqtt/user; "certfingerprint" and "certcn" only when
 * cert_fingerprint is not "". *password_item: the password's item, for the
 * caller to wipe once the body is printed. NULL when out of memory (then the
 * password is wiped already). */
cJSON *cr_connect_body(const char *user, const char *password, const char *id, const char *cert_fingerprint,
		const char *cert_cn, cJSON **password_item);

/* The cache key of a CONNECT grant: the user, the digest of its credentials
 * and the certificate's fingerprint ("" without one), so that a grant for one
 * certificate never answers for another certificate or for none. `key`
 * points into the arguments. */
void cr_connect_key(struct cr_key *key, const char *user, const unsigned char digest[CR_DIGEST_LEN],
		const char *cert_fingerprint);

#endif
