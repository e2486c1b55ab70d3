#include <cjson/cJSON.h>

#include "answer.h"

static bool field_is_true(const char *body, size_t len, const char *name)
{
	cJSON *root;
	bool yes;

	if(body == NULL || len == 0){
		return false;
	}
	root = cJSON_ParseWithLength(body, len);
	yes = cJSON_IsObject(root) && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, name));
	cJSON_Delete(root);
	return yes;
}

bool cr_answer_grants(const char *body, size_t len)
{
	return field_is_true(body, len, "ok");
}

bool cr_answer_unknown_user(const char *body, size_t len)
{
	return field_is_true(body, len, "unknown_user");
}
