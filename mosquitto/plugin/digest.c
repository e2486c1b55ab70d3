#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "digest.h"

int cr_digest_new_key(unsigned char key[CR_DIGEST_KEY_LEN])
{
	return RAND_bytes(key, CR_DIGEST_KEY_LEN) == 1 ? 0 : -1;
}

int cr_random_bytes(unsigned char *buf, size_t len)
{
	return RAND_bytes(buf, (int)len) == 1 ? 0 : -1;
}

int cr_connect_digest(const unsigned char key[CR_DIGEST_KEY_LEN], const char *username, const char *password,
		const char *clientid, unsigned char out[CR_DIGEST_LEN])
{
	size_t ulen = strlen(username);
	size_t plen = password ? strlen(password) : 0;
	size_t clen = strlen(clientid);
	size_t total = ulen + 1 + plen + 1 + clen;
	unsigned char *buf = malloc(total);
	unsigned int outlen = 0;
	unsigned char *rc;

	if(buf == NULL){
		return -1;
	}
	memcpy(buf, username, ulen);
	buf[ulen] = '\0';
	if(plen){
		memcpy(buf + ulen + 1, password, plen);
	}
	buf[ulen + 1 + plen] = '\0';
	memcpy(buf + ulen + 1 + plen + 1, clientid, clen);
	rc = HMAC(EVP_sha256(), key, CR_DIGEST_KEY_LEN, buf, total, out, &outlen);
	OPENSSL_cleanse(buf, total);
	free(buf);
	return (rc != NULL && outlen == CR_DIGEST_LEN) ? 0 : -1;
}
