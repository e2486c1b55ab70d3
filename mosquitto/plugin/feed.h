/* The change feed's answers (docs/change-feed.md), parsed with cJSON. */
#ifndef CR_FEED_H
#define CR_FEED_H

#include <stdbool.h>
#include <stddef.h>

#define CR_POSITION_MAX 128
#define CR_FEED_BODY_MAX (4u * 1024u * 1024u) /* larger answers are refused unparsed */

enum cr_change_type {
	CR_CHANGE_USER = 1, /* drop the user's answers (and kick its clients when kick) */
	CR_CHANGE_ALL = 2,  /* drop the whole cache */
};

struct cr_change {
	enum cr_change_type type;
	bool kick;
	char *user;
	/* CR_CHANGE_USER only, or NULL: a client ID that became this user's own.
	 * Every cached CONNECT grant goes (another user's with it may be among
	 * them), and whoever is connected with it is disconnected. */
	char *client_id;
};

struct cr_feed_answer {
	char position[CR_POSITION_MAX + 1];
	bool reset; /* drop everything, then apply the changes (recorded after the data loss) */
	size_t count;
	struct cr_change *changes;
};

/* 0, or -1 with a one-line reason in err (garbage: the caller keeps its position
 * and cache). Entries of an unknown shape are skipped. Free with cr_feed_answer_free. */
int cr_feed_parse(const char *body, size_t len, struct cr_feed_answer *out, char *err, size_t errlen);
void cr_feed_answer_free(struct cr_feed_answer *answer);

/* Whether p may be a position (1-128 of [A-Za-z0-9._:~-]): it goes out in a
 * URL and a header, so one read from a file is checked like one from the feed. */
bool cr_feed_position_valid(const char *p);

#endif
