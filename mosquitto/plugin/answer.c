#include <cjson/cJSON.h>

#include "answer.h"

bool cr_answer_grants(const char *body, size_t len)
{
	cJSON *root;
	bool ok;

	if(body == NULL || len == 0){
		return false;
	}
	root = cJSON_ParseWithLength(body, len);
	ok = cJSON_IsObject(root) && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "ok"));
	cJSON_Delete(root);
	return ok;
}
