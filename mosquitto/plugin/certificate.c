/* A CONNECT's client certificate: its identity, the check's body, the grant's cache key. */
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "certificate.h"

int cr_certificate_identity(X509 *cert, char fingerprint[CR_CERT_FINGERPRINT_LEN + 1], char *cn, size_t cn_size)
{
	unsigned char digest[32];
	unsigned int digest_len = 0;
	int cn_len;

	if(cert == NULL || cn_size < 2 || X509_digest(cert, EVP_sha256(), digest, &digest_len) != 1
			|| digest_len != sizeof(digest)){
		return -1;
	}
	/* The text's length, or -1 without a CN; a longer CN is cut to fit, so
	 * it is refused rather than sent shortened as another username. */
	cn_len = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, (int)cn_size);
	if(cn_len <= 0 || (size_t)cn_len >= cn_size - 1 || strlen(cn) != (size_t)cn_len){
		cn[0] = '\0';
		return -1;
	}
	for(unsigned int i = 0; i < digest_len; i++){
		snprintf(fingerprint + 2 * i, 3, "%02x", digest[i]);
	}
	return 0;
}

cJSON *cr_connect_body(const char *user, const char *password, const char *id, const char *cert_fingerprint,
		const char *cert_cn, cJSON **password_item)
{
	cJSON *body = cJSON_CreateObject();
	bool has_cert = cert_fingerprint[0] != '\0';

	*password_item = NULL;
	if(body == NULL || cJSON_AddStringToObject(body, "username", user) == NULL
			|| (*password_item = cJSON_AddStringToObject(body, "password", password)) == NULL
			|| cJSON_AddStringToObject(body, "clientid", id) == NULL
			|| (has_cert && (cJSON_AddStringToObject(body, "certfingerprint", cert_fingerprint) == NULL
					|| cJSON_AddStringToObject(body, "certcn", cert_cn) == NULL))){
		if(*password_item != NULL && (*password_item)->valuestring != NULL){
			OPENSSL_cleanse((*password_item)->valuestring, strlen((*password_item)->valuestring));
		}
		cJSON_Delete(body);
		*password_item = NULL;
		return NULL;
	}
	return body;
}

void cr_connect_key(struct cr_key *key, const char *user, const unsigned char digest[CR_DIGEST_LEN],
		const char *cert_fingerprint)
{
	memset(key, 0, sizeof(*key));
	key->user = user;
	key->user_len = strlen(user);
	key->kind = CR_KIND_CONNECT;
	key->part[0] = digest;
	key->part_len[0] = CR_DIGEST_LEN;
	key->part[1] = cert_fingerprint;
	key->part_len[1] = strlen(cert_fingerprint);
}
