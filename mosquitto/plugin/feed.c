#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "feed.h"

bool cr_feed_position_valid(const char *p)
{
	size_t len = strlen(p);

	if(len == 0 || len > CR_POSITION_MAX){
		return false;
	}
	for(size_t i = 0; i < len; i++){
		char c = p[i];
		if(!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_'
				|| c == ':' || c == '~' || c == '-')){
			return false;
		}
	}
	return true;
}

static int parse_change(const cJSON *item, struct cr_change *out)
{
	const cJSON *user, *all, *kick, *client_id;

	if(!cJSON_IsObject(item)){
		return 0;
	}
	all = cJSON_GetObjectItemCaseSensitive(item, "all");
	if(cJSON_IsTrue(all)){
		out->type = CR_CHANGE_ALL;
		out->kick = false;
		out->user = NULL;
		out->client_id = NULL;
		return 1;
	}
	user = cJSON_GetObjectItemCaseSensitive(item, "user");
	if(!cJSON_IsString(user) || user->valuestring == NULL || user->valuestring[0] == '\0'){
		return 0;
	}
	kick = cJSON_GetObjectItemCaseSensitive(item, "kick");
	out->type = CR_CHANGE_USER;
	out->kick = cJSON_IsTrue(kick);
	out->user = strdup(user->valuestring);
	if(out->user == NULL){
		return -1;
	}
	out->client_id = NULL;
	client_id = cJSON_GetObjectItemCaseSensitive(item, "clientId");
	if(cJSON_IsString(client_id) && client_id->valuestring != NULL && client_id->valuestring[0] != '\0'){
		out->client_id = strdup(client_id->valuestring);
		if(out->client_id == NULL){
			free(out->user);
			return -1;
		}
	}
	return 1;
}

int cr_feed_parse(const char *body, size_t len, struct cr_feed_answer *out, char *err, size_t errlen)
{
	cJSON *root = NULL;
	const cJSON *position, *reset, *changes, *item;
	int n;

	memset(out, 0, sizeof(*out));
	if(body == NULL || len == 0){
		snprintf(err, errlen, "empty answer");
		return -1;
	}
	if(len > CR_FEED_BODY_MAX){
		snprintf(err, errlen, "answer larger than %u bytes", CR_FEED_BODY_MAX);
		return -1;
	}
	root = cJSON_ParseWithLength(body, len);
	if(root == NULL || !cJSON_IsObject(root)){
		snprintf(err, errlen, "answer is not a JSON object");
		goto fail;
	}
	position = cJSON_GetObjectItemCaseSensitive(root, "position");
	if(!cJSON_IsString(position) || position->valuestring == NULL || !cr_feed_position_valid(position->valuestring)){
		snprintf(err, errlen, "answer has no valid \"position\"");
		goto fail;
	}
	strcpy(out->position, position->valuestring);
	reset = cJSON_GetObjectItemCaseSensitive(root, "reset");
	if(reset != NULL && !cJSON_IsBool(reset)){
		snprintf(err, errlen, "\"reset\" is not a boolean");
		goto fail;
	}
	out->reset = cJSON_IsTrue(reset);
	changes = cJSON_GetObjectItemCaseSensitive(root, "changes");
	if(changes != NULL && !cJSON_IsArray(changes)){
		snprintf(err, errlen, "\"changes\" is not a list");
		goto fail;
	}
	n = changes ? cJSON_GetArraySize(changes) : 0;
	if(n > 0){
		out->changes = calloc((size_t)n, sizeof(*out->changes));
		if(out->changes == NULL){
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
		cJSON_ArrayForEach(item, changes){
			int rc = parse_change(item, &out->changes[out->count]);
			if(rc < 0){
				snprintf(err, errlen, "out of memory");
				goto fail;
			}
			out->count += (size_t)rc;
		}
	}
	cJSON_Delete(root);
	return 0;
fail:
	cJSON_Delete(root);
	cr_feed_answer_free(out);
	return -1;
}

void cr_feed_answer_free(struct cr_feed_answer *answer)
{
	for(size_t i = 0; i < answer->count; i++){
		free(answer->changes[i].user);
		free(answer->changes[i].client_id);
	}
	free(answer->changes);
	answer->changes = NULL;
	answer->count = 0;
}
