// ident-load: a closed-loop load generator for an ident (RFC 1413) server,
// used by bench/ident-queries.ts to measure queries per second.
//
// A load generator written in Node costs about as much CPU per query as the
// daemon it measures, and on a 2-core machine the two then share the cores.
// This one is a single epoll loop with one query per connection, as Squid
// makes them, so nearly all the CPU is left to the daemon.
//
// Usage: ident-load HOST PORT CLIENTS WARMUP_MS MEASURE_MS QUERIES_FILE [MAX_QUERIES]
//   QUERIES_FILE: one query a line, "querier<TAB>request<TAB>expected reply",
//   request and reply without their CR LF (both are sent and checked with it).
//   An expected reply with " : ERROR : " in it (e.g. "... : ERROR : NO-USER",
//   a query for an absent connection) is a miss, any other a hit; both are
//   right only when the reply is exactly the expected one.
//   MAX_QUERIES (default 0: no limit): no new query starts after that many.
//   Each of CLIENTS connections in turn: connects from the next query's
//   querier address, sends its request, reads until the server closes, checks
//   the reply byte for byte, closes, and starts the next query.
//
// Prints one JSON object on stdout: right replies that ended in the measuring
// window and their rate, latency median and p99 (µs), wrong replies (any reply other
// than the expected one, a connection error, or no reply within 10 s) over
// the whole run (`all` queries), with a few examples, and the CPU time this
// process used: per query in the window, and in all. Stops by itself: no new query starts after
// WARMUP_MS + MEASURE_MS, and each has a 10 s deadline.
//
// Also: right hits and misses in the window (`hits`, `misses`); the wrong
// replies by kind (`unexpectedErrors`: an ERROR reply where a name was
// expected, or another ERROR than the expected one; `timeouts`;
// `connectionErrors`; `wrongReplies`: anything else, e.g. another name); and
// per second since the start (warm-up included, up to the last completion),
// the right hits and right misses that completed in it (`hitBuckets`,
// `missBuckets`). `activeSeconds`: from the window's start to its end or to
// the last completion, whichever is first (MAX_QUERIES can end a run early).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { REPLY_CAP = 512, TIMEOUT_MS = 10000, MAX_EXAMPLES = 5, MAX_CLIENTS = 4096 };

struct query {
  struct sockaddr_storage from;
  socklen_t from_len;
  char* request;  // with CR LF
  size_t request_len;
  char* expected;  // with CR LF
  size_t expected_len;
  int miss;  // the expected reply is an ERROR
};

struct slot {
  int fd;
  int connected;
  const struct query* q;
  int64_t start_ns;
  size_t got;
  char reply[REPLY_CAP + 1];  // one byte more: a reply over the cap is seen
};

static struct query* queries;
static size_t n_queries, next_query;
static struct sockaddr_storage target;
static socklen_t target_len;
static int ep;

static uint32_t* latencies;  // µs, of the queries completed in the window
static size_t n_lat, cap_lat;
static uint64_t measured, all_done, wrong;
static uint64_t hits, misses, unexpected_errors, timeouts, connection_errors, wrong_replies;
static uint64_t started, max_queries;
static int64_t last_finish_ns;
static uint32_t *hit_buckets, *miss_buckets;
static size_t n_buckets, used_buckets;
static int64_t t0_ns;
static char examples[MAX_EXAMPLES][400];
static int n_examples;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double cpu_us(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 + ru.ru_utime.tv_usec +
         ru.ru_stime.tv_usec;
}

static void die(const char* what) {
  fprintf(stderr, "ident-load: %s: %s\n", what, strerror(errno));
  exit(2);
}

// Appends s to out as the inside of a JSON string (quotes, backslashes and
// control bytes escaped), within cap bytes.
static void json_escape(char* out, size_t cap, const char* s, size_t len) {
  size_t o = strlen(out);
  for (size_t i = 0; i < len && o + 7 < cap; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      out[o++] = '\\';
      out[o++] = (char)c;
    } else if (c < 0x20 || c >= 0x7f) {
      o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
    } else {
      out[o++] = (char)c;
    }
  }
  out[o] = 0;
}

static void record_wrong(const struct slot* s, const char* why) {
  wrong++;
  if (n_examples >= MAX_EXAMPLES) return;
  char* e = examples[n_examples++];
  e[0] = 0;
  json_escape(e, sizeof examples[0], "expected ", 9);
  json_escape(e, sizeof examples[0], s->q->expected, s->q->expected_len);
  json_escape(e, sizeof examples[0], ", got ", 6);
  json_escape(e, sizeof examples[0], s->reply, s->got);
  json_escape(e, sizeof examples[0], " (", 2);
  json_escape(e, sizeof examples[0], why, strlen(why));
  json_escape(e, sizeof examples[0], ")", 1);
}

static int start_query(struct slot* s) {
  started++;
  s->q = &queries[next_query];
  next_query = (next_query + 1) % n_queries;
  s->got = 0;
  s->connected = 0;
  s->start_ns = now_ns();
  int family = s->q->from.ss_family;
  s->fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s->fd < 0) die("socket");
  int one = 1;
  // The port is chosen at connect time, per destination: the querier
  // addresses do not run out of ports when many connections wait in TIME_WAIT.
  // (An IP-level option that Linux honours on IPv6 sockets too.)
  setsockopt(s->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  if (bind(s->fd, (const struct sockaddr*)&s->q->from, s->q->from_len) < 0) die("bind");
  if (connect(s->fd, (const struct sockaddr*)&target, target_len) < 0 && errno != EINPROGRESS)
    return -1;
  struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = s};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) < 0) die("epoll_ctl add");
  return 0;
}

// Ends the slot's query, checks its reply (or counts `error` as a wrong
// reply), and closes its connection. Queries that end inside the measuring
// window are counted and timed.
static void finish(struct slot* s, int64_t end_ns, int64_t window_start, int64_t window_end,
                   const char* error) {
  close(s->fd);
  s->fd = -1;
  all_done++;
  int ok = 0;
  if (error) {
    if (strncmp(error, "no reply", 8) == 0)
      timeouts++;
    else
      connection_errors++;
    record_wrong(s, error);
  } else if (s->got != s->q->expected_len || memcmp(s->reply, s->q->expected, s->got) != 0) {
    if (memmem(s->reply, s->got, " : ERROR : ", 11))
      unexpected_errors++;
    else
      wrong_replies++;
    record_wrong(s, "wrong reply");
  } else {
    ok = 1;
  }
  if (ok) {
    size_t b = (size_t)((end_ns - t0_ns) / 1000000000);
    if (b < n_buckets) {
      if (s->q->miss)
        miss_buckets[b]++;
      else
        hit_buckets[b]++;
      if (b + 1 > used_buckets) used_buckets = b + 1;
    }
  }
  // Only right replies count towards the rate and the latencies.
  if (ok && end_ns >= window_start && end_ns < window_end) {
    measured++;
    if (s->q->miss)
      misses++;
    else
      hits++;
    last_finish_ns = end_ns;
    if (n_lat == cap_lat) {
      cap_lat = cap_lat ? cap_lat * 2 : 1 << 16;
      latencies = realloc(latencies, cap_lat * sizeof *latencies);
      if (!latencies) die("realloc");
    }
    latencies[n_lat++] = (uint32_t)((end_ns - s->start_ns) / 1000);
  }
}

static int parse_address(const char* text, struct sockaddr_storage* out, socklen_t* len, int port) {
  memset(out, 0, sizeof *out);
  struct sockaddr_in* a4 = (struct sockaddr_in*)out;
  struct sockaddr_in6* a6 = (struct sockaddr_in6*)out;
  if (inet_pton(AF_INET, text, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    *len = sizeof *a4;
    return 0;
  }
  if (inet_pton(AF_INET6, text, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    *len = sizeof *a6;
    return 0;
  }
  return -1;
}

static void read_queries(const char* path) {
  FILE* f = fopen(path, "r");
  if (!f) die(path);
  char* line = NULL;
  size_t cap = 0, alloc = 0;
  ssize_t n;
  while ((n = getline(&line, &cap, f)) > 0) {
    if (line[n - 1] == '\n') line[--n] = 0;
    char* tab1 = strchr(line, '\t');
    char* tab2 = tab1 ? strchr(tab1 + 1, '\t') : NULL;
    if (!tab2) {
      fprintf(stderr, "ident-load: %s: a line without two tabs\n", path);
      exit(2);
    }
    *tab1 = *tab2 = 0;
    if (n_queries == alloc) {
      alloc = alloc ? alloc * 2 : 1024;
      queries = realloc(queries, alloc * sizeof *queries);
      if (!queries) die("realloc");
    }
    struct query* q = &queries[n_queries++];
    if (parse_address(line, &q->from, &q->from_len, 0) < 0) {
      fprintf(stderr, "ident-load: not an address: %s\n", line);
      exit(2);
    }
    if (asprintf(&q->request, "%s\r\n", tab1 + 1) < 0) die("asprintf");
    if (asprintf(&q->expected, "%s\r\n", tab2 + 1) < 0) die("asprintf");
    q->request_len = strlen(q->request);
    q->expected_len = strlen(q->expected);
    q->miss = strstr(q->expected, " : ERROR : ") != NULL;
    if (q->expected_len > REPLY_CAP) {
      fprintf(stderr, "ident-load: an expected reply over %d bytes\n", REPLY_CAP);
      exit(2);
    }
  }
  free(line);
  fclose(f);
  if (n_queries == 0) {
    fprintf(stderr, "ident-load: %s has no queries\n", path);
    exit(2);
  }
}

// Whether a client that just finished starts another query.
static int more(int64_t now, int64_t window_end) {
  return now < window_end && (max_queries == 0 || started < max_queries);
}

static void print_buckets(const char* key, const uint32_t* b) {
  printf(",\"%s\":[", key);
  for (size_t i = 0; i < used_buckets; i++) printf("%s%u", i ? "," : "", b[i]);
  printf("]");
}

static int by_value(const void* a, const void* b) {
  uint32_t x = *(const uint32_t*)a, y = *(const uint32_t*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  if (argc != 7 && argc != 8) {
    fprintf(
        stderr,
        "usage: ident-load HOST PORT CLIENTS WARMUP_MS MEASURE_MS QUERIES_FILE [MAX_QUERIES]\n");
    return 2;
  }
  int port = atoi(argv[2]);
  int clients = atoi(argv[3]);
  int64_t warmup_ns = (int64_t)atoll(argv[4]) * 1000000;
  int64_t measure_ns = (int64_t)atoll(argv[5]) * 1000000;
  if (parse_address(argv[1], &target, &target_len, port) < 0 || port <= 0 || port > 65535 ||
      clients <= 0 || clients > MAX_CLIENTS || warmup_ns < 0 || measure_ns <= 0) {
    fprintf(stderr, "ident-load: bad arguments\n");
    return 2;
  }
  read_queries(argv[6]);
  max_queries = argc == 8 ? strtoull(argv[7], NULL, 10) : 0;
  // One bucket a second, with room for the drain after the window.
  n_buckets = (size_t)((warmup_ns + measure_ns) / 1000000000) + 2 + TIMEOUT_MS / 1000 + 1;
  hit_buckets = calloc(n_buckets, sizeof *hit_buckets);
  miss_buckets = calloc(n_buckets, sizeof *miss_buckets);
  if (!hit_buckets || !miss_buckets) die("calloc");
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");

  struct slot* slots = calloc((size_t)clients, sizeof *slots);
  if (!slots) die("calloc");
  int64_t t0 = now_ns();
  t0_ns = t0;
  int64_t window_start = t0 + warmup_ns, window_end = window_start + measure_ns;
  double cpu_start = -1, cpu_end = -1;
  int active = 0;
  for (int i = 0; i < clients; i++) slots[i].fd = -1;
  for (int i = 0; i < clients; i++) {
    if (max_queries && started >= max_queries) break;
    if (start_query(&slots[i]) < 0) {
      finish(&slots[i], now_ns(), window_start, window_end, strerror(errno));
    } else {
      active++;
    }
  }

  struct epoll_event events[256];
  int64_t last_sweep = t0;
  while (active > 0) {
    int n = epoll_wait(ep, events, 256, 100);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    int64_t now = now_ns();
    if (cpu_start < 0 && now >= window_start) cpu_start = cpu_us();
    if (cpu_end < 0 && now >= window_end) cpu_end = cpu_us();
    for (int i = 0; i < n; i++) {
      struct slot* s = events[i].data.ptr;
      const char* error = NULL;
      int done = 0;
      if (!s->connected) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
          error = strerror(err);
          done = 1;
        } else {
          s->connected = 1;
          ssize_t w = write(s->fd, s->q->request, s->q->request_len);
          if (w != (ssize_t)s->q->request_len) {
            error = "short write";
            done = 1;
          } else {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = s};
            if (epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev) < 0) die("epoll_ctl mod");
          }
        }
      } else {
        for (;;) {
          size_t room = REPLY_CAP + 1 - s->got;
          if (room == 0) {
            error = "reply over the size cap";
            done = 1;
            break;
          }
          ssize_t r = read(s->fd, s->reply + s->got, room);
          if (r > 0) {
            s->got += (size_t)r;
            continue;
          }
          if (r == 0)
            done = 1;
          else if (errno != EAGAIN && errno != EWOULDBLOCK) {
            error = strerror(errno);
            done = 1;
          }
          break;
        }
      }
      if (!done) continue;
      finish(s, now, window_start, window_end, error);
      active--;
      if (more(now, window_end)) {
        if (start_query(s) < 0) {
          finish(s, now_ns(), window_start, window_end, strerror(errno));
        } else {
          active++;
        }
      }
    }
    if (now - last_sweep > 100000000) {
      last_sweep = now;
      for (int i = 0; i < clients; i++) {
        struct slot* s = &slots[i];
        if (s->fd >= 0 && now - s->start_ns > (int64_t)TIMEOUT_MS * 1000000) {
          finish(s, now, window_start, window_end, "no reply within 10 s");
          active--;
          if (more(now, window_end)) {
            if (start_query(s) < 0)
              finish(s, now_ns(), window_start, window_end, strerror(errno));
            else
              active++;
          }
        }
      }
    }
  }
  if (cpu_start < 0) cpu_start = cpu_us();
  if (cpu_end < 0) cpu_end = cpu_us();

  qsort(latencies, n_lat, sizeof *latencies, by_value);
  uint32_t median = n_lat ? latencies[n_lat / 2] : 0;
  size_t p99_at = n_lat ? (size_t)(0.99 * (double)n_lat) : 0;
  uint32_t p99 = n_lat ? latencies[p99_at < n_lat ? p99_at : n_lat - 1] : 0;
  double seconds = (double)measure_ns / 1e9;
  int64_t active_end = last_finish_ns && last_finish_ns < window_end ? last_finish_ns : window_end;
  if (max_queries == 0 || active_end < window_start) active_end = window_end;
  double active_seconds = (double)(active_end - window_start) / 1e9;
  printf(
      "{\"measured\":%llu,\"seconds\":%.3f,\"qps\":%.1f,\"medianUs\":%u,\"p99Us\":%u,"
      "\"all\":%llu,\"wrong\":%llu,\"cpuUsPerQuery\":%.2f,\"cpuUsTotal\":%.0f,\"examples\":[",
      (unsigned long long)measured, seconds, (double)measured / seconds, median, p99,
      (unsigned long long)all_done, (unsigned long long)wrong,
      measured ? (cpu_end - cpu_start) / (double)measured : 0.0, cpu_us());
  for (int i = 0; i < n_examples; i++) printf("%s\"%s\"", i ? "," : "", examples[i]);
  printf(
      "],\"hits\":%llu,\"misses\":%llu,\"unexpectedErrors\":%llu,\"timeouts\":%llu,"
      "\"connectionErrors\":%llu,\"wrongReplies\":%llu,\"activeSeconds\":%.3f",
      (unsigned long long)hits, (unsigned long long)misses, (unsigned long long)unexpected_errors,
      (unsigned long long)timeouts, (unsigned long long)connection_errors,
      (unsigned long long)wrong_replies, active_seconds);
  print_buckets("hitBuckets", hit_buckets);
  print_buckets("missBuckets", miss_buckets);
  printf("}\n");
  return 0;
}
