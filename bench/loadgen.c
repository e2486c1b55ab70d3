/*
 * loadgen: the benchmark's load generator (bench/run.py drives it).
 *
 *   loadgen publish --port P [--user U --password W] [--sub-user U --sub-password W]
 *                   [--subscribers S] [--topics T] [--messages N] [--qos 0|1]
 *                   [--inflight W] [--window L] [--payload BYTES] [--prefix TOPIC]
 *                   [--broker-pid PID]   (its CPU share during the timed phase)
 *   loadgen connect --port P --user-prefix PREFIX --count N [--first I] --password W
 *                   [--concurrency C] [--probe-user U --probe-password W]
 *   loadgen flood   --port P --user-prefix PREFIX --password W --rate R --seconds S
 *                   --probe-user U --probe-password W [--users K] [--concurrency C]
 *                   (R CONNECTs/s of PREFIX<i>, or of the K known PREFIX00000.. with a wrong
 *                   password; R 0: the probe alone, the unflooded baseline)
 *   loadgen http    --url URL --user-prefix PREFIX [--users K] [--concurrency C]
 *                   [--samples N] [--position P]   (sent as X-Cregistry-Position, as the plugin does)
 *
 * Each mode prints one JSON object on stdout and exits 0, or prints
 * {"error": "..."} and exits 1. Every MQTT client is a libmosquitto client
 * (MQTT 3.1.1), driven by one poll() loop in one thread, so the generator
 * costs little next to the broker it measures; only the PINGREQ probe of the
 * connect mode is a raw socket in its own thread, because libmosquitto
 * cannot send a PINGREQ on demand.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <mosquitto.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HOST "127.0.0.1"
#define KEEPALIVE 60

struct options {
	const char *mode;
	int port;
	const char *user, *password, *sub_user, *sub_password;
	const char *user_prefix, *probe_user, *probe_password;
	const char *url, *prefix, *position;
	int subscribers, topics, messages, qos, inflight, window, payload;
	int first, count, concurrency, samples, users, probe_interval_ms, broker_pid, rate, seconds;
	double stall_seconds;
};

/* A finished CONNECT's client gone, outside a callback so the DISCONNECT goes out now. */
static void close_slot(struct mosquitto **client, int *active)
{
	mosquitto_disconnect(*client);
	mosquitto_destroy(*client);
	*client = NULL;
	(*active)--;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds (user + system) of a process, from /proc/<pid>/stat; -1 if unknown. */
static double process_cpu(int pid)
{
	char path[64], text[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if(f == NULL){
		return -1.0;
	}
	size_t len = fread(text, 1, sizeof(text) - 1, f);
	fclose(f);
	text[len] = '\0';
	char *p = strrchr(text, ')'); /* the command name may hold spaces */
	unsigned long utime, stime;
	if(p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2){
		return -1.0;
	}
	return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static double own_cpu(void)
{
	struct rusage usage;
	getrusage(RUSAGE_SELF, &usage);
	return (double)usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + (double)usage.ru_stime.tv_sec +
			usage.ru_stime.tv_usec / 1e6;
}

static void fail(const char *format, ...)
{
	char message[512];
	va_list args;
	va_start(args, format);
	vsnprintf(message, sizeof(message), format, args);
	va_end(args);
	/* The message never holds a quote or a backslash: it is ours. */
	printf("{\"error\": \"%s\"}\n", message);
	fflush(stdout);
	exit(1);
}

static void *xcalloc(size_t count, size_t size)
{
	void *p = calloc(count, size);
	if(p == NULL){
		fail("out of memory");
	}
	return p;
}

static int compare_doubles(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* The q-quantile (nearest rank) of n sorted values, in milliseconds. */
static double quantile_ms(const double *sorted, int n, double q)
{
	if(n == 0){
		return 0.0;
	}
	int rank = (int)ceil(q * n);
	if(rank < 1){
		rank = 1;
	}
	return sorted[rank - 1] * 1000.0;
}

static void print_latencies(const char *name, double *values, int n)
{
	qsort(values, (size_t)n, sizeof(double), compare_doubles);
	printf("\"%s_p50_ms\": %.4f, \"%s_p99_ms\": %.4f, \"%s_max_ms\": %.4f", name, quantile_ms(values, n, 0.5),
			name, quantile_ms(values, n, 0.99), name, n ? values[n - 1] * 1000.0 : 0.0);
}

/* ------------------------------------------------------------------------
 * One poll() pass over many libmosquitto clients.
 * ---------------------------------------------------------------------- */

struct pump {
	struct pollfd *fds;
	int *owner;
	int capacity;
	double last_misc;
};

static void pump_init(struct pump *pump, int capacity)
{
	pump->fds = xcalloc((size_t)capacity, sizeof(struct pollfd));
	pump->owner = xcalloc((size_t)capacity, sizeof(int));
	pump->capacity = capacity;
	pump->last_misc = now();
}

/* Reads everything that arrived (libmosquitto reads one packet per call when
 * nothing QoS > 0 waits, so call it until the socket says EAGAIN) and writes
 * whatever is queued. Returns the index of a client whose connection failed,
 * or -1. */
static int pump_once(struct pump *pump, struct mosquitto **clients, int n, int timeout_ms)
{
	int k = 0;
	for(int i = 0; i < n && k < pump->capacity; i++){
		if(clients[i] == NULL){
			continue;
		}
		int fd = mosquitto_socket(clients[i]);
		if(fd < 0){
			continue;
		}
		pump->fds[k].fd = fd;
		pump->fds[k].events = (short)(POLLIN | (mosquitto_want_write(clients[i]) ? POLLOUT : 0));
		pump->fds[k].revents = 0;
		pump->owner[k] = i;
		k++;
	}
	if(poll(pump->fds, (nfds_t)k, timeout_ms) < 0 && errno != EINTR){
		fail("poll: %s", strerror(errno));
	}
	int failed = -1;
	for(int j = 0; j < k; j++){
		struct mosquitto *m = clients[pump->owner[j]];
		short revents = pump->fds[j].revents;
		int rc = MOSQ_ERR_SUCCESS;
		if(revents & (POLLIN | POLLERR | POLLHUP)){
			for(int round = 0; round < 4096; round++){
				errno = 0;
				rc = mosquitto_loop_read(m, 1);
				if(rc != MOSQ_ERR_SUCCESS || errno == EAGAIN || errno == EWOULDBLOCK){
					break;
				}
			}
		}
		if(rc == MOSQ_ERR_SUCCESS && (revents & POLLOUT) && mosquitto_socket(m) >= 0){
			rc = mosquitto_loop_write(m, 1);
		}
		if(rc != MOSQ_ERR_SUCCESS && failed < 0){
			failed = pump->owner[j];
		}
	}
	double t = now();
	if(t - pump->last_misc > 1.0){
		for(int i = 0; i < n; i++){
			if(clients[i] != NULL){
				mosquitto_loop_misc(clients[i]);
			}
		}
		pump->last_misc = t;
	}
	return failed;
}

/* ------------------------------------------------------------------------
 * publish: throughput of one publisher to S subscribers over T topics.
 * ---------------------------------------------------------------------- */

struct client_state {
	int connack; /* -1 until the CONNACK arrives */
	bool lost;
	int granted; /* -1 until the SUBACK arrives */
	long received;
	long acked;
};

static void on_connect(struct mosquitto *m, void *obj, int rc)
{
	(void)m;
	((struct client_state *)obj)->connack = rc;
}

static void on_disconnect(struct mosquitto *m, void *obj, int rc)
{
	(void)m;
	(void)rc;
	((struct client_state *)obj)->lost = true;
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int count, const int *granted)
{
	(void)m;
	(void)mid;
	((struct client_state *)obj)->granted = count > 0 ? granted[0] : 0x80;
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *message)
{
	(void)m;
	(void)message;
	((struct client_state *)obj)->received++;
}

static void on_publish(struct mosquitto *m, void *obj, int mid)
{
	(void)m;
	(void)mid;
	((struct client_state *)obj)->acked++;
}

static struct mosquitto *new_client(const char *client_id, const char *user, const char *password,
		struct client_state *state)
{
	state->connack = -1;
	state->granted = -1;
	struct mosquitto *m = mosquitto_new(client_id, true, state);
	if(m == NULL){
		fail("mosquitto_new failed");
	}
	if(user != NULL && mosquitto_username_pw_set(m, user, password) != MOSQ_ERR_SUCCESS){
		fail("mosquitto_username_pw_set failed");
	}
	mosquitto_connect_callback_set(m, on_connect);
	mosquitto_disconnect_callback_set(m, on_disconnect);
	mosquitto_subscribe_callback_set(m, on_subscribe);
	mosquitto_message_callback_set(m, on_message);
	mosquitto_publish_callback_set(m, on_publish);
	return m;
}

/* Messages every subscriber has received and (QoS 1) the broker acknowledged. */
static long completed(struct client_state *states, int subscribers, int qos)
{
	long done = qos > 0 ? states[0].acked : -1;
	for(int i = 1; i <= subscribers; i++){
		if(done < 0 || states[i].received < done){
			done = states[i].received;
		}
	}
	return done < 0 ? 0 : done;
}

/* Pumps until `target` messages are complete; dies when nothing moves for
 * stall_seconds. Returns the time the target was reached. */
static double pump_until(struct pump *pump, struct mosquitto **clients, struct client_state *states, int n,
		int subscribers, int qos, long target, double stall_seconds, const char *what)
{
	long last = -1;
	double moved = now();
	for(;;){
		long done = completed(states, subscribers, qos);
		double t = now();
		if(done >= target){
			return t;
		}
		if(done != last){
			last = done;
			moved = t;
		}else if(t - moved > stall_seconds){
			fail("%s: stalled at %ld of %ld messages", what, done, target);
		}
		int lost = pump_once(pump, clients, n, 100);
		if(lost >= 0){
			fail("%s: client %d lost its connection", what, lost);
		}
	}
}

static int run_publish(const struct options *o)
{
	int n = o->subscribers + 1;
	struct mosquitto **clients = xcalloc((size_t)n, sizeof(*clients));
	struct client_state *states = xcalloc((size_t)n, sizeof(*states));
	char client_id[128];
	snprintf(client_id, sizeof(client_id), "%s-pub", o->user ? o->user : "loadgen");
	clients[0] = new_client(client_id, o->user, o->password, &states[0]);
	if(o->qos > 0 && mosquitto_int_option(clients[0], MOSQ_OPT_SEND_MAXIMUM, o->inflight) != MOSQ_ERR_SUCCESS){
		fail("cannot set the in-flight window");
	}
	for(int i = 1; i < n; i++){
		snprintf(client_id, sizeof(client_id), "%s-sub-%d", o->sub_user ? o->sub_user : "loadgen", i);
		clients[i] = new_client(client_id, o->sub_user, o->sub_password, &states[i]);
	}
	struct pump pump;
	pump_init(&pump, n);
	for(int i = 0; i < n; i++){
		int rc = mosquitto_connect(clients[i], HOST, o->port, KEEPALIVE);
		if(rc != MOSQ_ERR_SUCCESS){
			fail("connect: %s", mosquitto_strerror(rc));
		}
	}
	double deadline = now() + o->stall_seconds;
	for(int i = 0; i < n; i++){
		while(states[i].connack < 0){
			if(states[i].lost || now() > deadline){
				fail("client %d got no CONNACK", i);
			}
			pump_once(&pump, clients, n, 100);
		}
		if(states[i].connack != 0){
			fail("client %d refused: %s", i, mosquitto_connack_string(states[i].connack));
		}
	}
	char filter[256];
	snprintf(filter, sizeof(filter), "%s/+", o->prefix);
	for(int i = 1; i < n; i++){
		if(mosquitto_subscribe(clients[i], NULL, filter, o->qos) != MOSQ_ERR_SUCCESS){
			fail("subscribe failed");
		}
	}
	for(int i = 1; i < n; i++){
		while(states[i].granted < 0){
			if(states[i].lost || now() > deadline){
				fail("subscriber %d got no SUBACK", i);
			}
			pump_once(&pump, clients, n, 100);
		}
		if(states[i].granted == 0x80){
			fail("subscription %s refused", filter);
		}
	}

	char **topics = xcalloc((size_t)o->topics, sizeof(char *));
	for(int t = 0; t < o->topics; t++){
		if(asprintf(&topics[t], "%s/%d", o->prefix, t) < 0){
			fail("out of memory");
		}
	}
	char *payload = xcalloc((size_t)o->payload + 1, 1);
	memset(payload, 'x', (size_t)o->payload);

	/* Warm-up: every topic once, so an authorising plugin has seen every
	 * (client, topic) pair before the clock starts. */
	long target = 0;
	double warm_started = now();
	for(int phase = 0; phase < 2; phase++){
		long count = phase == 0 ? o->topics : o->messages;
		long base = target;
		target += count;
		double started = now();
		double broker_cpu = o->broker_pid ? process_cpu(o->broker_pid) : -1.0;
		double loadgen_cpu = own_cpu();
		long published = 0;
		while(published < count){
			long done = completed(states, o->subscribers, o->qos) - base;
			while(published < count && published - done < o->window && !mosquitto_want_write(clients[0])){
				int rc = mosquitto_publish(clients[0], NULL, topics[published % o->topics], o->payload, payload,
						o->qos, false);
				if(rc != MOSQ_ERR_SUCCESS){
					fail("publish: %s", mosquitto_strerror(rc));
				}
				published++;
			}
			int lost = pump_once(&pump, clients, n, 100);
			if(lost >= 0){
				fail("client %d lost its connection", lost);
			}
		}
		double finished = pump_until(&pump, clients, states, n, o->subscribers, o->qos, target, o->stall_seconds,
				phase == 0 ? "warm-up" : "publish");
		if(phase == 1){
			double seconds = finished - started > 1e-9 ? finished - started : 1e-9;
			double broker_share = -1.0;
			if(broker_cpu >= 0 && process_cpu(o->broker_pid) >= 0){
				broker_share = (process_cpu(o->broker_pid) - broker_cpu) / seconds;
			}
			printf("{\"messages\": %d, \"subscribers\": %d, \"topics\": %d, \"qos\": %d, \"seconds\": %.6f, "
					"\"msgs_per_s\": %.1f, \"deliveries_per_s\": %.1f, \"warm_seconds\": %.6f, "
					"\"broker_cpu_share\": %.3f, \"loadgen_cpu_share\": %.3f}\n",
					o->messages, o->subscribers, o->topics, o->qos, seconds, o->messages / seconds,
					(double)o->messages * o->subscribers / seconds, started - warm_started, broker_share,
					(own_cpu() - loadgen_cpu) / seconds);
		}
	}
	for(int i = 0; i < n; i++){
		mosquitto_disconnect(clients[i]);
		mosquitto_destroy(clients[i]);
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * The probe: one authenticated raw MQTT connection sending PINGREQ.
 * ---------------------------------------------------------------------- */

struct probe {
	int port;
	const char *user, *password;
	int interval_ms;
	volatile bool stop;
	int fd;
	double *rtts;
	int count, capacity;
	pthread_t thread;
};

static void put_string(unsigned char **p, const char *s)
{
	size_t len = strlen(s);
	*(*p)++ = (unsigned char)(len >> 8);
	*(*p)++ = (unsigned char)(len & 0xff);
	memcpy(*p, s, len);
	*p += len;
}

static bool read_exactly(int fd, unsigned char *buffer, size_t length)
{
	size_t got = 0;
	while(got < length){
		ssize_t r = recv(fd, buffer + got, length - got, 0);
		if(r <= 0){
			return false;
		}
		got += (size_t)r;
	}
	return true;
}

static void probe_connect(struct probe *probe)
{
	probe->fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)probe->port)};
	inet_pton(AF_INET, HOST, &address.sin_addr);
	if(probe->fd < 0 || connect(probe->fd, (struct sockaddr *)&address, sizeof(address)) != 0){
		fail("probe: cannot connect: %s", strerror(errno));
	}
	int one = 1;
	setsockopt(probe->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	unsigned char packet[1024];
	unsigned char *p = packet + 5; /* room for the fixed header */
	const unsigned char header[] = {0, 4, 'M', 'Q', 'T', 'T', 4, 0xC2, KEEPALIVE >> 8, KEEPALIVE & 0xff};
	memcpy(p, header, sizeof(header));
	p += sizeof(header);
	if(strlen(probe->user) * 2 + strlen(probe->password) > 900){
		fail("probe: credentials too long");
	}
	put_string(&p, probe->user); /* client id = username */
	put_string(&p, probe->user);
	put_string(&p, probe->password);
	size_t remaining = (size_t)(p - (packet + 5));
	/* remaining < 16384: two bytes of remaining length at most */
	unsigned char *start;
	if(remaining < 128){
		start = packet + 3;
		start[1] = (unsigned char)remaining;
	}else{
		start = packet + 2;
		start[1] = (unsigned char)((remaining & 0x7f) | 0x80);
		start[2] = (unsigned char)(remaining >> 7);
	}
	start[0] = 0x10;
	if(send(probe->fd, start, (size_t)(p - start), 0) != p - start){
		fail("probe: cannot send CONNECT");
	}
	unsigned char connack[4];
	if(!read_exactly(probe->fd, connack, 4) || connack[0] != 0x20){
		fail("probe: no CONNACK");
	}
	if(connack[3] != 0){
		fail("probe: CONNECT refused: %s", mosquitto_connack_string(connack[3]));
	}
}

static void *probe_run(void *arg)
{
	struct probe *probe = arg;
	const unsigned char pingreq[2] = {0xC0, 0x00};
	while(!probe->stop){
		unsigned char pingresp[2];
		double started = now();
		if(send(probe->fd, pingreq, 2, 0) != 2 || !read_exactly(probe->fd, pingresp, 2) || pingresp[0] != 0xD0){
			probe->count = -1; /* the broker dropped the probe */
			return NULL;
		}
		if(probe->count < probe->capacity){
			probe->rtts[probe->count++] = now() - started;
		}
		usleep((useconds_t)probe->interval_ms * 1000);
	}
	return NULL;
}

/* ------------------------------------------------------------------------
 * connect: N known devices, C of them connecting at any time.
 * ---------------------------------------------------------------------- */

struct slot {
	struct client_state state;
	double started;
	int device;
};

enum connect_outcome { CONNECT_WAITING, CONNECT_ACCEPTED, CONNECT_REFUSED, CONNECT_LOST };

/* Where a slot's CONNECT stands at `t`: answered, lost (closed, or no CONNACK
 * within `stall_seconds`), or still waiting. */
static enum connect_outcome connect_outcome(const struct slot *s, struct mosquitto *client, double t, double stall_seconds)
{
	if(s->state.connack == 0){
		return CONNECT_ACCEPTED;
	}
	if(s->state.connack > 0){
		return CONNECT_REFUSED;
	}
	if(s->state.lost || mosquitto_socket(client) < 0 || t - s->started > stall_seconds){
		return CONNECT_LOST;
	}
	return CONNECT_WAITING;
}

static int run_connect(const struct options *o)
{
	struct probe probe = {.port = o->port, .user = o->probe_user, .password = o->probe_password,
			.interval_ms = o->probe_interval_ms, .fd = -1};
	if(o->probe_user != NULL){
		probe.capacity = 1000000;
		probe.rtts = xcalloc((size_t)probe.capacity, sizeof(double));
		probe_connect(&probe);
	}
	int c = o->concurrency;
	struct mosquitto **clients = xcalloc((size_t)c, sizeof(*clients));
	struct slot *slots = xcalloc((size_t)c, sizeof(*slots));
	double *latencies = xcalloc((size_t)o->count, sizeof(double));
	int ok = 0, refused = 0, lost = 0, next = 0, active = 0;
	int first_refusal = -1;
	struct pump pump;
	pump_init(&pump, c);
	if(o->probe_user != NULL && pthread_create(&probe.thread, NULL, probe_run, &probe) != 0){
		fail("cannot start the probe thread");
	}
	double started = now();
	double last_connack = started;
	while(next < o->count || active > 0){
		for(int i = 0; i < c && next < o->count; i++){
			if(clients[i] != NULL){
				continue;
			}
			char name[128];
			snprintf(name, sizeof(name), "%s%05d", o->user_prefix, o->first + next);
			slots[i].device = next++;
			clients[i] = new_client(name, name, o->password, &slots[i].state);
			slots[i].state.lost = false;
			slots[i].started = now();
			int rc = mosquitto_connect(clients[i], HOST, o->port, KEEPALIVE);
			if(rc != MOSQ_ERR_SUCCESS){
				fail("connect %s: %s", name, mosquitto_strerror(rc));
			}
			active++;
		}
		pump_once(&pump, clients, c, 50);
		double t = now();
		for(int i = 0; i < c; i++){
			struct slot *s = &slots[i];
			if(clients[i] == NULL){
				continue;
			}
			switch(connect_outcome(s, clients[i], t, o->stall_seconds)){
			case CONNECT_WAITING:
				continue;
			case CONNECT_ACCEPTED:
				latencies[ok++] = t - s->started;
				last_connack = t;
				break;
			case CONNECT_REFUSED:
				refused++;
				if(first_refusal < 0){
					first_refusal = s->state.connack;
				}
				break;
			case CONNECT_LOST:
				lost++;
				break;
			}
			close_slot(&clients[i], &active);
		}
	}
	double seconds = last_connack - started;
	probe.stop = true;
	if(o->probe_user != NULL){
		pthread_join(probe.thread, NULL);
		close(probe.fd);
	}
	printf("{\"devices\": %d, \"concurrency\": %d, \"ok\": %d, \"refused\": %d, \"lost\": %d, "
			"\"first_refusal\": \"%s\", \"seconds\": %.6f, ",
			o->count, c, ok, refused, lost, first_refusal < 0 ? "" : mosquitto_connack_string(first_refusal),
			seconds);
	print_latencies("connack", latencies, ok);
	if(o->probe_user != NULL){
		printf(", \"probe_pings\": %d, ", probe.count);
		print_latencies("probe", probe.rtts, probe.count < 0 ? 0 : probe.count);
	}
	printf("}\n");
	return 0;
}

/* ------------------------------------------------------------------------
 * flood: R CONNECTs per second that the broker refuses, for S seconds, while
 * a connected probe times its PINGREQs. At most C of them wait for their
 * CONNACK at once (a broker that falls behind makes the flood queue here,
 * not grow without bound).
 * ---------------------------------------------------------------------- */

static int run_flood(const struct options *o)
{
	struct probe probe = {.port = o->port, .user = o->probe_user, .password = o->probe_password,
			.interval_ms = o->probe_interval_ms, .fd = -1, .capacity = 1000000};
	probe.rtts = xcalloc((size_t)probe.capacity, sizeof(double));
	probe_connect(&probe);
	int c = o->concurrency;
	struct mosquitto **clients = xcalloc((size_t)c, sizeof(*clients));
	struct slot *slots = xcalloc((size_t)c, sizeof(*slots));
	int sent = 0, ok = 0, refused = 0, lost = 0, active = 0, queued_behind = 0;
	struct pump pump;
	pump_init(&pump, c);
	if(pthread_create(&probe.thread, NULL, probe_run, &probe) != 0){
		fail("cannot start the probe thread");
	}
	double started = now();
	double end = started + o->seconds;
	for(double t = started; t < end || active > 0; t = now()){
		int due = t < end ? (int)((t - started) * o->rate) : sent;
		for(int i = 0; i < c && sent < due; i++){
			if(clients[i] != NULL){
				continue;
			}
			char name[128], client_id[64];
			if(o->users > 0){
				snprintf(name, sizeof(name), "%s%05d", o->user_prefix, sent % o->users);
			}else{
				snprintf(name, sizeof(name), "%s%07d", o->user_prefix, sent);
			}
			snprintf(client_id, sizeof(client_id), "flood-%d-%d", (int)getpid(), sent);
			slots[i].device = sent++;
			clients[i] = new_client(client_id, name, o->password, &slots[i].state);
			slots[i].state.lost = false;
			slots[i].started = t;
			if(mosquitto_connect(clients[i], HOST, o->port, KEEPALIVE) != MOSQ_ERR_SUCCESS){
				lost++; /* the listener's backlog is full: counted, not fatal */
				mosquitto_destroy(clients[i]);
				clients[i] = NULL;
				continue;
			}
			active++;
		}
		if(sent < due){
			queued_behind = due - sent > queued_behind ? due - sent : queued_behind;
		}
		pump_once(&pump, clients, c, 1);
		t = now();
		for(int i = 0; i < c; i++){
			struct slot *s = &slots[i];
			if(clients[i] == NULL){
				continue;
			}
			switch(connect_outcome(s, clients[i], t, o->stall_seconds)){
			case CONNECT_WAITING:
				continue;
			case CONNECT_ACCEPTED:
				ok++;
				break;
			case CONNECT_REFUSED:
				refused++;
				break;
			case CONNECT_LOST:
				lost++;
				break;
			}
			close_slot(&clients[i], &active);
		}
	}
	double seconds = now() - started;
	probe.stop = true;
	pthread_join(probe.thread, NULL);
	close(probe.fd);
	printf("{\"rate\": %d, \"sent\": %d, \"ok\": %d, \"refused\": %d, \"lost\": %d, \"most_behind\": %d, "
			"\"seconds\": %.6f, \"sent_per_s\": %.1f, \"probe_pings\": %d, ",
			o->rate, sent, ok, refused, lost, queued_behind, seconds, o->seconds > 0 ? sent / (double)o->seconds : 0.0,
			probe.count);
	print_latencies("probe", probe.rtts, probe.count < 0 ? 0 : probe.count);
	printf("}\n");
	return 0;
}

/* ------------------------------------------------------------------------
 * http: uncached ACL checks at the service, as the plugin makes them.
 * ---------------------------------------------------------------------- */

struct http_worker {
	const struct options *o;
	int index;
	double *latencies;
	long connections;
	long bad_status;
	long last_status;
	pthread_barrier_t *barrier;
	pthread_t thread;
};

static size_t discard(char *data, size_t size, size_t count, void *user)
{
	(void)data;
	(void)user;
	return size * count;
}

static void *http_run(void *arg)
{
	struct http_worker *w = arg;
	const struct options *o = w->o;
	CURL *curl = curl_easy_init();
	if(curl == NULL){
		fail("curl_easy_init failed");
	}
	struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
	headers = curl_slist_append(headers, "Expect:");
	if(o->position != NULL){
		char line[256];
		snprintf(line, sizeof(line), "X-Cregistry-Position: %s", o->position);
		headers = curl_slist_append(headers, line);
	}
	curl_easy_setopt(curl, CURLOPT_URL, o->url);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 5000L);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_TCP_NODELAY, 1L);
	char user[128], body[512];
	snprintf(user, sizeof(user), "%s%05d", o->user_prefix, w->index % o->users);
	int warm = 20;
	pthread_barrier_wait(w->barrier);
	for(int i = -warm; i < o->samples; i++){
		/* A new topic every time: nothing below the service can answer from a cache. */
		snprintf(body, sizeof(body),
				"{\"username\": \"%s\", \"clientid\": \"%s\", \"topic\": \"bench/%s/t/%d-%d\", \"acc\": 2}", user,
				user, user, w->index, i + warm);
		curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
		double started = now();
		CURLcode rc = curl_easy_perform(curl);
		double elapsed = now() - started;
		if(rc != CURLE_OK){
			fail("http: %s", curl_easy_strerror(rc));
		}
		long status = 0, connects = 0;
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
		curl_easy_getinfo(curl, CURLINFO_NUM_CONNECTS, &connects);
		if(i >= 0){
			w->latencies[i] = elapsed;
			w->connections += connects;
			if(status != 200){
				w->bad_status++;
				w->last_status = status;
			}
		}
	}
	curl_slist_free_all(headers);
	curl_easy_cleanup(curl);
	return NULL;
}

static int run_http(const struct options *o)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
	int c = o->concurrency;
	struct http_worker *workers = xcalloc((size_t)c, sizeof(*workers));
	double *all = xcalloc((size_t)c * (size_t)o->samples, sizeof(double));
	pthread_barrier_t barrier;
	pthread_barrier_init(&barrier, NULL, (unsigned)c + 1);
	for(int i = 0; i < c; i++){
		workers[i] = (struct http_worker){.o = o, .index = i, .latencies = all + (size_t)i * (size_t)o->samples,
				.barrier = &barrier};
		if(pthread_create(&workers[i].thread, NULL, http_run, &workers[i]) != 0){
			fail("cannot start an HTTP thread");
		}
	}
	pthread_barrier_wait(&barrier);
	double started = now();
	long connections = 0, bad = 0, last_status = 0;
	for(int i = 0; i < c; i++){
		pthread_join(workers[i].thread, NULL);
		connections += workers[i].connections;
		bad += workers[i].bad_status;
		if(workers[i].bad_status){
			last_status = workers[i].last_status;
		}
	}
	double seconds = now() - started;
	int n = c * o->samples;
	printf("{\"concurrency\": %d, \"requests\": %d, \"seconds\": %.6f, \"requests_per_s\": %.1f, "
			"\"new_connections\": %ld, \"not_200\": %ld, \"last_bad_status\": %ld, ",
			c, n, seconds, n / seconds, connections, bad, last_status);
	print_latencies("latency", all, n);
	printf("}\n");
	curl_global_cleanup();
	return 0;
}

/* ------------------------------------------------------------------------ */

static int positive(const char *name, const char *value)
{
	char *end;
	long v = strtol(value, &end, 10);
	if(*end != '\0' || v < 0 || v > 100000000){
		fail("--%s must be a non-negative integer", name);
	}
	return (int)v;
}

int main(int argc, char *argv[])
{
	struct options o = {.subscribers = 1, .topics = 1, .messages = 10000, .qos = 0, .inflight = 20,
			.window = 500, .payload = 64, .first = 0, .count = 0, .concurrency = 1, .samples = 1000, .users = 1,
			.probe_interval_ms = 10, .stall_seconds = 30.0, .prefix = "bench/load"};
	static const struct option long_options[] = {
			{"port", required_argument, NULL, 'p'}, {"user", required_argument, NULL, 'u'},
			{"password", required_argument, NULL, 'w'}, {"sub-user", required_argument, NULL, 'U'},
			{"sub-password", required_argument, NULL, 'W'}, {"subscribers", required_argument, NULL, 's'},
			{"topics", required_argument, NULL, 't'}, {"messages", required_argument, NULL, 'n'},
			{"qos", required_argument, NULL, 'q'}, {"inflight", required_argument, NULL, 'i'},
			{"window", required_argument, NULL, 'l'}, {"payload", required_argument, NULL, 'b'},
			{"prefix", required_argument, NULL, 'x'}, {"user-prefix", required_argument, NULL, 'P'},
			{"first", required_argument, NULL, 'f'}, {"count", required_argument, NULL, 'c'},
			{"concurrency", required_argument, NULL, 'C'}, {"probe-user", required_argument, NULL, 'r'},
			{"probe-password", required_argument, NULL, 'R'}, {"probe-interval-ms", required_argument, NULL, 'I'},
			{"url", required_argument, NULL, 'H'}, {"users", required_argument, NULL, 'K'},
			{"samples", required_argument, NULL, 'S'}, {"stall-seconds", required_argument, NULL, 'T'},
			{"broker-pid", required_argument, NULL, 'B'}, {"position", required_argument, NULL, 'O'},
			{"rate", required_argument, NULL, 'Q'}, {"seconds", required_argument, NULL, 'D'},
			{NULL, 0, NULL, 0}};
	if(argc < 2){
		fail("usage: loadgen publish|connect|flood|http [options] (see the comment at the top of loadgen.c)");
	}
	o.mode = argv[1];
	optind = 2;
	int opt;
	while((opt = getopt_long(argc, argv, "", long_options, NULL)) != -1){
		switch(opt){
			case 'p': o.port = positive("port", optarg); break;
			case 'u': o.user = optarg; break;
			case 'w': o.password = optarg; break;
			case 'U': o.sub_user = optarg; break;
			case 'W': o.sub_password = optarg; break;
			case 's': o.subscribers = positive("subscribers", optarg); break;
			case 't': o.topics = positive("topics", optarg); break;
			case 'n': o.messages = positive("messages", optarg); break;
			case 'q': o.qos = positive("qos", optarg); break;
			case 'i': o.inflight = positive("inflight", optarg); break;
			case 'l': o.window = positive("window", optarg); break;
			case 'b': o.payload = positive("payload", optarg); break;
			case 'x': o.prefix = optarg; break;
			case 'P': o.user_prefix = optarg; break;
			case 'f': o.first = positive("first", optarg); break;
			case 'c': o.count = positive("count", optarg); break;
			case 'C': o.concurrency = positive("concurrency", optarg); break;
			case 'r': o.probe_user = optarg; break;
			case 'R': o.probe_password = optarg; break;
			case 'I': o.probe_interval_ms = positive("probe-interval-ms", optarg); break;
			case 'H': o.url = optarg; break;
			case 'O': o.position = optarg; break;
			case 'K': o.users = positive("users", optarg); break;
			case 'S': o.samples = positive("samples", optarg); break;
			case 'T': o.stall_seconds = positive("stall-seconds", optarg); break;
			case 'B': o.broker_pid = positive("broker-pid", optarg); break;
			case 'Q': o.rate = positive("rate", optarg); break;
			case 'D': o.seconds = positive("seconds", optarg); break;
			default: fail("unknown option");
		}
	}
	if(optind != argc){
		fail("unexpected argument %s", argv[optind]);
	}
	mosquitto_lib_init();
	int rc;
	if(strcmp(o.mode, "publish") == 0){
		if(o.port == 0 || o.topics < 1 || o.window < 1 || o.qos > 1 || (o.subscribers == 0 && o.qos == 0)){
			fail("publish needs --port, --topics >= 1, --window >= 1, --qos 0|1, and --qos 1 without subscribers");
		}
		rc = run_publish(&o);
	}else if(strcmp(o.mode, "connect") == 0){
		if(o.port == 0 || o.user_prefix == NULL || o.password == NULL || o.concurrency < 1 ||
				(o.probe_user != NULL && o.probe_password == NULL)){
			fail("connect needs --port, --user-prefix, --password, --concurrency >= 1");
		}
		rc = run_connect(&o);
	}else if(strcmp(o.mode, "flood") == 0){
		if(o.port == 0 || o.user_prefix == NULL || o.password == NULL || o.probe_user == NULL ||
				o.probe_password == NULL || o.concurrency < 1 || o.seconds < 1){
			fail("flood needs --port, --user-prefix, --password, --probe-user, --probe-password, --seconds >= 1");
		}
		rc = run_flood(&o);
	}else if(strcmp(o.mode, "http") == 0){
		if(o.url == NULL || o.user_prefix == NULL || o.concurrency < 1 || o.users < 1 || o.samples < 1){
			fail("http needs --url, --user-prefix, --concurrency >= 1, --users >= 1, --samples >= 1");
		}
		rc = run_http(&o);
	}else{
		fail("unknown mode %s", o.mode);
	}
	mosquitto_lib_cleanup();
	return rc;
}
