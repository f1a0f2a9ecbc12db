// floor-identd: a minimal reference ident (RFC 1413) server, the floor that
// bench/real-traffic.ts measures the daemon against in the same run.
//
// It does only what an answer needs: one single-threaded epoll loop; per
// connection it reads one line (at most 1000 bytes), parses "port , port",
// makes one netlink conntrack GET (nfct_query NFCT_Q_GET) by the reply tuple
// (reply source = the querier's address and its port, reply destination =
// our local address and port), maps the entry's original source address to a
// container name, writes the reply and closes. The address -> name map is
// read ONCE at start from the Docker API (GET /containers/json over the
// Docker unix socket), with a minimal scanner for "Names" and "IPAddress" /
// "GlobalIPv6Address". No logging per query, no timeouts, no access list, no
// later Docker updates.
//
// Usage: floor-identd LISTEN_ADDR PORT DOCKER_SOCKET
// Prints "ready <containers> <addresses>" on stdout once it listens.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { LINE_CAP = 1000, NAME_CAP = 256 };

static void die(const char* what) {
  fprintf(stderr, "floor-identd: %s: %s\n", what, strerror(errno));
  exit(2);
}

// ------------------------------------------------ address -> name map

// Keys are 16 bytes: IPv6, or IPv4 mapped (::ffff:a.b.c.d).
struct slot_entry {
  unsigned char key[16];
  char* name;  // NULL: empty slot
};

static struct slot_entry* map;
static size_t map_cap, map_len, n_containers;

static uint64_t hash16(const unsigned char* k) {
  uint64_t h = 1469598103934665603ULL;
  for (int i = 0; i < 16; i++) h = (h ^ k[i]) * 1099511628211ULL;
  return h;
}

static void map_put(const unsigned char* key, const char* name);

static void map_grow(void) {
  struct slot_entry* old = map;
  size_t old_cap = map_cap;
  map_cap = map_cap ? map_cap * 2 : 1024;
  map = calloc(map_cap, sizeof *map);
  if (!map) die("calloc");
  map_len = 0;
  for (size_t i = 0; i < old_cap; i++) {
    if (old[i].name) {
      map_put(old[i].key, old[i].name);
      free(old[i].name);
    }
  }
  free(old);
}

static void map_put(const unsigned char* key, const char* name) {
  if ((map_len + 1) * 2 > map_cap) map_grow();
  size_t i = hash16(key) & (map_cap - 1);
  while (map[i].name && memcmp(map[i].key, key, 16) != 0) i = (i + 1) & (map_cap - 1);
  if (map[i].name) {
    free(map[i].name);
  } else {
    map_len++;
  }
  memcpy(map[i].key, key, 16);
  map[i].name = strdup(name);
  if (!map[i].name) die("strdup");
}

static const char* map_get(const unsigned char* key) {
  if (map_cap == 0) return NULL;
  size_t i = hash16(key) & (map_cap - 1);
  while (map[i].name) {
    if (memcmp(map[i].key, key, 16) == 0) return map[i].name;
    i = (i + 1) & (map_cap - 1);
  }
  return NULL;
}

static void key_of4(unsigned char* key, const void* a4) {
  memset(key, 0, 10);
  key[10] = key[11] = 0xff;
  memcpy(key + 12, a4, 4);
}

// ------------------------------------------------ the Docker listing

// Reads GET /containers/json from the Docker unix socket; returns the body.
static char* docker_list(const char* socket_path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket (unix)");
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(socket_path) >= sizeof sa.sun_path) {
    fprintf(stderr, "floor-identd: socket path too long\n");
    exit(2);
  }
  strcpy(sa.sun_path, socket_path);
  if (connect(fd, (struct sockaddr*)&sa, sizeof sa) < 0) die(socket_path);
  // HTTP/1.0: the answer is neither chunked nor kept alive; it ends at EOF.
  static const char req[] = "GET /containers/json HTTP/1.0\r\nHost: docker\r\n\r\n";
  if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) die("write (docker)");
  size_t cap = 1 << 16, len = 0;
  char* buf = malloc(cap + 1);
  if (!buf) die("malloc");
  for (;;) {
    if (len == cap) {
      cap *= 2;
      buf = realloc(buf, cap + 1);
      if (!buf) die("realloc");
    }
    ssize_t r = read(fd, buf + len, cap - len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) die("read (docker)");
    if (r == 0) break;
    len += (size_t)r;
  }
  close(fd);
  buf[len] = 0;
  if (strncmp(buf, "HTTP/1.", 7) != 0 || strncmp(buf + 8, " 200", 4) != 0) {
    fprintf(stderr, "floor-identd: Docker answered: %.80s\n", buf);
    exit(2);
  }
  char* body = strstr(buf, "\r\n\r\n");
  if (!body) {
    fprintf(stderr, "floor-identd: no body in Docker's answer\n");
    exit(2);
  }
  return body + 4;
}

// Copies the JSON string starting at p (just after its opening quote) into
// out, without unescaping (names and addresses have no escapes); returns the
// position after the closing quote.
static const char* copy_string(const char* p, char* out, size_t cap) {
  size_t n = 0;
  while (*p && *p != '"') {
    if (*p == '\\' && p[1]) p++;
    if (n + 1 < cap) out[n++] = *p;
    p++;
  }
  out[n] = 0;
  return *p ? p + 1 : p;
}

// After `"Key"`: skips whitespace, the colon, whitespace and `[` (when
// `array`), up to the opening quote of a string; NULL when there is none.
static const char* value_string(const char* p, int array) {
  while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r' || *p == ':' || (array && *p == '['))
    p++;
  return *p == '"' ? p + 1 : NULL;
}

// Every "IPAddress" / "GlobalIPv6Address" maps to the "Names" seen last.
static void load_containers(const char* socket_path) {
  const char* p = docker_list(socket_path);
  char name[NAME_CAP] = "";
  char text[64];
  while ((p = strchr(p, '"')) != NULL) {
    p++;
    const char* v;
    if (strncmp(p, "Names\"", 6) == 0 && (v = value_string(p + 6, 1)) != NULL) {
      if (*v == '/') v++;
      p = copy_string(v, name, sizeof name);
      n_containers++;
    } else if ((strncmp(p, "IPAddress\"", 10) == 0 && (v = value_string(p + 10, 0)) != NULL) ||
               (strncmp(p, "GlobalIPv6Address\"", 18) == 0 &&
                (v = value_string(p + 18, 0)) != NULL)) {
      p = copy_string(v, text, sizeof text);
      unsigned char key[16], a4[4];
      if (name[0] && inet_pton(AF_INET, text, a4) == 1) {
        key_of4(key, a4);
        map_put(key, name);
      } else if (name[0] && inet_pton(AF_INET6, text, key) == 1) {
        map_put(key, name);
      }
    } else {
      // Skip the rest of this string (a key or a value we do not read).
      while (*p && *p != '"') p += (*p == '\\' && p[1]) ? 2 : 1;
      if (*p) p++;
    }
  }
}

// ------------------------------------------------ conntrack

static struct nfct_handle* nfct;
static struct nf_conntrack* request;
static unsigned char found_key[16];
static int found;

// The kernel finds an entry by either direction's tuple: only one whose
// reply tuple is the one asked for counts.
static int on_entry(enum nf_conntrack_msg_type type, struct nf_conntrack* ct, void* data) {
  (void)type;
  (void)data;
  uint8_t l3 = nfct_get_attr_u8(ct, ATTR_ORIG_L3PROTO);
  if (nfct_get_attr_u16(ct, ATTR_REPL_PORT_SRC) != nfct_get_attr_u16(request, ATTR_ORIG_PORT_SRC) ||
      nfct_get_attr_u16(ct, ATTR_REPL_PORT_DST) != nfct_get_attr_u16(request, ATTR_ORIG_PORT_DST))
    return NFCT_CB_CONTINUE;
  if (l3 == AF_INET) {
    if (memcmp(nfct_get_attr(ct, ATTR_REPL_IPV4_SRC), nfct_get_attr(request, ATTR_ORIG_IPV4_SRC),
               4) ||
        memcmp(nfct_get_attr(ct, ATTR_REPL_IPV4_DST), nfct_get_attr(request, ATTR_ORIG_IPV4_DST),
               4))
      return NFCT_CB_CONTINUE;
    key_of4(found_key, nfct_get_attr(ct, ATTR_ORIG_IPV4_SRC));
    found = 1;
  } else if (l3 == AF_INET6) {
    if (memcmp(nfct_get_attr(ct, ATTR_REPL_IPV6_SRC), nfct_get_attr(request, ATTR_ORIG_IPV6_SRC),
               16) ||
        memcmp(nfct_get_attr(ct, ATTR_REPL_IPV6_DST), nfct_get_attr(request, ATTR_ORIG_IPV6_DST),
               16))
      return NFCT_CB_CONTINUE;
    memcpy(found_key, nfct_get_attr(ct, ATTR_ORIG_IPV6_SRC), 16);
    found = 1;
  }
  return NFCT_CB_CONTINUE;
}

// Unmaps ::ffff:a.b.c.d so that an IPv4 connection accepted on an IPv6
// socket is looked up as IPv4.
static int plain_family(const struct sockaddr_storage* a, const void** addr, uint16_t* port) {
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in* a4 = (const struct sockaddr_in*)a;
    *addr = &a4->sin_addr;
    *port = a4->sin_port;
    return AF_INET;
  }
  const struct sockaddr_in6* a6 = (const struct sockaddr_in6*)a;
  *port = a6->sin6_port;
  if (IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr)) {
    *addr = a6->sin6_addr.s6_addr + 12;
    return AF_INET;
  }
  *addr = &a6->sin6_addr;
  return AF_INET6;
}

// The original source of the entry whose reply tuple is
// querier:port_on_client -> local:port_on_server; 1 when found, 0 when
// absent, -1 on another error.
static int lookup(const struct sockaddr_storage* peer, const struct sockaddr_storage* local,
                  uint16_t port_on_server, uint16_t port_on_client, unsigned char* key) {
  const void *src, *dst;
  uint16_t ignored;
  int family = plain_family(peer, &src, &ignored);
  if (plain_family(local, &dst, &ignored) != family) return 0;
  // nfct_query() always sends the request's tuple as CTA_TUPLE_ORIG (it
  // needs ATTR_L3PROTO, and that alone makes it build one), and the kernel
  // looks a GET up in the hash of both directions: the reply tuple is given
  // as the original attributes, and on_entry() checks the direction.
  nfct_set_attr_u8(request, ATTR_L3PROTO, (uint8_t)family);
  nfct_set_attr_u8(request, ATTR_L4PROTO, IPPROTO_TCP);
  if (family == AF_INET) {
    nfct_set_attr(request, ATTR_IPV4_SRC, src);
    nfct_set_attr(request, ATTR_IPV4_DST, dst);
  } else {
    nfct_set_attr(request, ATTR_IPV6_SRC, src);
    nfct_set_attr(request, ATTR_IPV6_DST, dst);
  }
  nfct_set_attr_u16(request, ATTR_PORT_SRC, htons(port_on_client));
  nfct_set_attr_u16(request, ATTR_PORT_DST, htons(port_on_server));
  found = 0;
  if (nfct_query(nfct, NFCT_Q_GET, request) < 0) return errno == ENOENT ? 0 : -1;
  if (!found) return 0;
  memcpy(key, found_key, 16);
  return 1;
}

// ------------------------------------------------ ident

struct conn {
  int fd;
  size_t len;
  struct sockaddr_storage peer, local;
  char line[LINE_CAP + 1];
};

static void finish(struct conn* c) {
  close(c->fd);
  free(c);
}

// Parses "p1 , p2" (spaces and tabs around either) up to CR LF / LF.
static int parse_ports(const char* s, unsigned* p1, unsigned* p2) {
  char* end;
  while (*s == ' ' || *s == '\t') s++;
  if (*s < '0' || *s > '9') return -1;
  unsigned long a = strtoul(s, &end, 10);
  s = end;
  while (*s == ' ' || *s == '\t') s++;
  if (*s++ != ',') return -1;
  while (*s == ' ' || *s == '\t') s++;
  if (*s < '0' || *s > '9') return -1;
  unsigned long b = strtoul(s, &end, 10);
  s = end;
  while (*s == ' ' || *s == '\t') s++;
  if (*s != '\r' && *s != '\n' && *s != 0) return -1;
  if (a < 1 || a > 65535 || b < 1 || b > 65535) return -1;
  *p1 = (unsigned)a;
  *p2 = (unsigned)b;
  return 0;
}

static void answer(struct conn* c) {
  char out[NAME_CAP + 64];
  unsigned p1, p2;
  int n;
  if (parse_ports(c->line, &p1, &p2) < 0) {
    n = snprintf(out, sizeof out, "0 , 0 : ERROR : INVALID-PORT\r\n");
  } else {
    unsigned char key[16];
    int r = lookup(&c->peer, &c->local, (uint16_t)p1, (uint16_t)p2, key);
    const char* name = r == 1 ? map_get(key) : NULL;
    if (name)
      n = snprintf(out, sizeof out, "%u , %u : USERID : OTHER : %s\r\n", p1, p2, name);
    else
      n = snprintf(out, sizeof out, "%u , %u : ERROR : %s\r\n", p1, p2,
                   r < 0 ? "UNKNOWN-ERROR" : "NO-USER");
  }
  if (n > 0) (void)!write(c->fd, out, (size_t)n);
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: floor-identd LISTEN_ADDR PORT DOCKER_SOCKET\n");
    return 2;
  }
  load_containers(argv[3]);

  nfct = nfct_open(CONNTRACK, 0);
  if (!nfct) die("nfct_open");
  if (nfct_callback_register(nfct, NFCT_T_ALL, on_entry, NULL) < 0) die("nfct_callback_register");
  request = nfct_new();
  if (!request) die("nfct_new");

  struct sockaddr_storage sa;
  memset(&sa, 0, sizeof sa);
  socklen_t sa_len;
  int port = atoi(argv[2]);
  struct sockaddr_in* a4 = (struct sockaddr_in*)&sa;
  struct sockaddr_in6* a6 = (struct sockaddr_in6*)&sa;
  if (inet_pton(AF_INET, argv[1], &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    sa_len = sizeof *a4;
  } else if (inet_pton(AF_INET6, argv[1], &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    sa_len = sizeof *a6;
  } else {
    fprintf(stderr, "floor-identd: not an address: %s\n", argv[1]);
    return 2;
  }
  int lfd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0) die("socket");
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(lfd, (struct sockaddr*)&sa, sa_len) < 0) die("bind");
  if (listen(lfd, 4096) < 0) die("listen");
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0) die("epoll_ctl");
  printf("ready %zu %zu\n", n_containers, map_len);
  fflush(stdout);

  struct epoll_event events[256];
  for (;;) {
    int n = epoll_wait(ep, events, 256, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("epoll_wait");
    for (int i = 0; i < n; i++) {
      struct conn* c = events[i].data.ptr;
      if (!c) {
        for (;;) {
          struct sockaddr_storage peer;
          socklen_t plen = sizeof peer;
          int fd = accept4(lfd, (struct sockaddr*)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) break;
          c = malloc(sizeof *c);
          if (!c) die("malloc");
          c->fd = fd;
          c->len = 0;
          c->peer = peer;
          socklen_t llen = sizeof c->local;
          getsockname(fd, (struct sockaddr*)&c->local, &llen);
          struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
          if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add");
        }
        continue;
      }
      ssize_t r = read(c->fd, c->line + c->len, LINE_CAP - c->len);
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (r <= 0) {
        finish(c);
        continue;
      }
      c->len += (size_t)r;
      c->line[c->len] = 0;
      if (memchr(c->line, '\n', c->len)) {
        answer(c);
        finish(c);
      } else if (c->len >= LINE_CAP) {
        finish(c);
      }
    }
  }
}
