/*
 * dfnode-pull: `dfnode pull REF` handed to the running `dfnode run` over its control socket without starting
 * Node (bin/dfnode runs it first; Node's start alone is ~60 ms of a ~0.25 s lazy pull). It speaks the control
 * protocol of src/daemon/control-protocol.ts: one request line of JSON, then progress lines and one final line.
 *
 * It takes only the plain case. A pull it does not take goes to the Node CLI: flags it does not know (or
 * --direct, --creds, --docker-config, --config, DFNODE_CONFIG, --help), or no daemon on the socket (the Node
 * CLI then says so and pulls in its own process, as it always did). It then execs `node $DFNODE_BUNDLE ARGS`
 * (bin/dfnode sets DFNODE_BUNDLE), or exits 100 without it. Every other outcome is the daemon's: its progress
 * lines on stdout, its error as "dfnode: error: MESSAGE" with the exit code it sends.
 *
 * The daemon is root's own process behind a 0600 socket, but its replies are still parsed defensively: lines
 * are bounded, JSON is parsed with a depth limit, and anything unexpected is a protocol error.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* control-protocol.ts: DEFAULT_STATE_DIR + '/' + CONTROL_SOCKET_NAME (test/cli/pull-client.test.ts checks it) */
#define DEFAULT_SOCKET "/var/lib/dfnode/state/control.sock"
/* control-protocol.ts: MAX_RESPONSE_LINE_BYTES */
#define MAX_LINE (1024 * 1024)
#define NOT_TAKEN 100
/* errors.ts exit codes of the failures this client reports itself */
#define EXIT_NETWORK 7
#define EXIT_CORRUPT 6
#define EXIT_ABORTED 130
#define MAX_DEPTH 32

static volatile sig_atomic_t interrupted = 0;
static char **all_args;
static int sock_fd = -1;

static void on_signal(int sig) {
  interrupted = sig;
  /* closing the connection cancels the pull in the daemon */
  if (sock_fd >= 0) shutdown(sock_fd, SHUT_RDWR);
}

static void fail(int code, const char *fmt, const char *a, const char *b) {
  fputs("dfnode: error: ", stderr);
  fprintf(stderr, fmt, a, b);
  fputc('\n', stderr);
  exit(code);
}

/* ------------------------------------------------------------------ request */

struct buf {
  char *p;
  size_t len, cap;
};

static void put(struct buf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = (b->len + n + 1) * 2;
    char *p = realloc(b->p, cap);
    if (!p) fail(EXIT_CORRUPT, "%s%s", "out of memory", "");
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
}

#define PUT(b, s) put(b, s, strlen(s))

static void puts_json(struct buf *b, const char *s) {
  put(b, "\"", 1);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    char esc[8];
    if (c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)c;
      put(b, esc, 2);
    } else if (c < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", c);
      put(b, esc, 6);
    } else {
      put(b, (const char *)&c, 1);
    }
  }
  put(b, "\"", 1);
}

/* ------------------------------------------------------------------ replies */

/* A JSON value at p (before end): returns the position after it, or NULL when it is not valid JSON. When `out`
 * is given and the value is a string, its decoded UTF-8 goes there. */
static const char *skip_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
  return p;
}

static int hex4(const char *p, const char *end, unsigned *v) {
  if (end - p < 4) return 0;
  *v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    *v <<= 4;
    if (c >= '0' && c <= '9') *v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') *v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') *v |= (unsigned)(c - 'A' + 10);
    else return 0;
  }
  return 1;
}

static void put_utf8(struct buf *b, unsigned cp) {
  char u[4];
  if (cp < 0x80) {
    u[0] = (char)cp;
    put(b, u, 1);
  } else if (cp < 0x800) {
    u[0] = (char)(0xc0 | (cp >> 6));
    u[1] = (char)(0x80 | (cp & 0x3f));
    put(b, u, 2);
  } else if (cp < 0x10000) {
    u[0] = (char)(0xe0 | (cp >> 12));
    u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    u[2] = (char)(0x80 | (cp & 0x3f));
    put(b, u, 3);
  } else {
    u[0] = (char)(0xf0 | (cp >> 18));
    u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    u[3] = (char)(0x80 | (cp & 0x3f));
    put(b, u, 4);
  }
}

static const char *parse_string(const char *p, const char *end, struct buf *out) {
  if (p >= end || *p != '"') return NULL;
  for (p++; p < end; p++) {
    unsigned char c = (unsigned char)*p;
    if (c == '"') return p + 1;
    if (c < 0x20) return NULL;
    if (c != '\\') {
      if (out) put(out, (const char *)&c, 1);
      continue;
    }
    if (++p >= end) return NULL;
    const char *simple = strchr("\"\\/bfnrt", *p);
    if (*p && simple) {
      static const char to[] = "\"\\/\b\f\n\r\t";
      if (out) put(out, &to[simple - "\"\\/bfnrt"], 1);
      continue;
    }
    if (*p != 'u') return NULL;
    unsigned cp;
    if (!hex4(p + 1, end, &cp)) return NULL;
    p += 4;
    if (cp >= 0xd800 && cp < 0xdc00) {
      unsigned lo;
      if (end - p < 7 || p[1] != '\\' || p[2] != 'u' || !hex4(p + 3, end, &lo) || lo < 0xdc00 || lo > 0xdfff)
        cp = 0xfffd;
      else {
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        p += 6;
      }
    } else if (cp >= 0xdc00 && cp < 0xe000) {
      cp = 0xfffd;
    }
    if (out) put_utf8(out, cp);
  }
  return NULL;
}

static const char *parse_value(const char *p, const char *end, int depth);

/* A member of an object being parsed: its key (decoded) and its value's span; false stops the parse. */
typedef int (*member_fn)(const char *key, const char *v, const char *vend, void *ctx);

/* The object or array at p (its opening bracket); with `member` (objects), each member is handed to it. */
static const char *parse_container(const char *p, const char *end, int depth, char close, int keyed,
                                   member_fn member, void *ctx) {
  if (depth > MAX_DEPTH) return NULL;
  p = skip_ws(p + 1, end);
  if (p < end && *p == close) return p + 1;
  for (;;) {
    struct buf key = {0};
    if (keyed) {
      p = parse_string(skip_ws(p, end), end, member ? &key : NULL);
      if (p) p = skip_ws(p, end);
      if (!p || p >= end || *p != ':') return free(key.p), NULL;
      p++;
    }
    const char *v = skip_ws(p, end);
    p = parse_value(v, end, depth + 1);
    if (p && member && !member(key.p ? key.p : "", v, p, ctx)) p = NULL;
    free(key.p);
    if (!p) return NULL;
    p = skip_ws(p, end);
    if (p < end && *p == ',') {
      p++;
      continue;
    }
    return p < end && *p == close ? p + 1 : NULL;
  }
}

static const char *parse_value(const char *p, const char *end, int depth) {
  p = skip_ws(p, end);
  if (p >= end) return NULL;
  switch (*p) {
    case '"':
      return parse_string(p, end, NULL);
    case '{':
      return parse_container(p, end, depth, '}', 1, NULL, NULL);
    case '[':
      return parse_container(p, end, depth, ']', 0, NULL, NULL);
    case 't':
      return end - p >= 4 && !memcmp(p, "true", 4) ? p + 4 : NULL;
    case 'f':
      return end - p >= 5 && !memcmp(p, "false", 5) ? p + 5 : NULL;
    case 'n':
      return end - p >= 4 && !memcmp(p, "null", 4) ? p + 4 : NULL;
    default: {
      const char *q = p;
      if (q < end && *q == '-') q++;
      while (q < end && strchr("0123456789.eE+-", *q) && *q) q++;
      return q > p ? q : NULL;
    }
  }
}

/* One reply line, as control-protocol.ts decodeReply reads it. */
struct reply {
  int kind; /* 0: unknown, 1: progress, 2: ok, 3: error */
  struct buf text;
  struct buf code;
  int exit_code;
};

/* The object that is all of [p, end): each member goes to `member`; false when it is not one. */
static int members(const char *p, const char *end, member_fn member, void *ctx) {
  p = skip_ws(p, end);
  if (p >= end || *p != '{') return 0;
  p = parse_container(p, end, 0, '}', 1, member, ctx);
  return p && skip_ws(p, end) == end;
}

static int error_member(const char *key, const char *v, const char *vend, void *ctx) {
  struct reply *r = ctx;
  if (!strcmp(key, "message")) return parse_string(v, vend, &r->text) != NULL;
  if (!strcmp(key, "code")) return parse_string(v, vend, &r->code) != NULL;
  if (!strcmp(key, "exit")) {
    char num[16] = {0};
    size_t n = (size_t)(vend - v);
    if (n == 0 || n >= sizeof num) return 1;
    memcpy(num, v, n);
    long e = strtol(num, NULL, 10);
    if (e > 0 && e < 256) r->exit_code = (int)e;
  }
  return 1;
}

static int reply_member(const char *key, const char *v, const char *vend, void *ctx) {
  struct reply *r = ctx;
  if (!strcmp(key, "progress")) {
    if (*v != '"') return 0;
    r->kind = 1;
    return parse_string(v, vend, &r->text) != NULL;
  }
  if (!strcmp(key, "ok")) {
    if (vend - v == 4 && !memcmp(v, "true", 4)) r->kind = 2;
    else if (vend - v == 5 && !memcmp(v, "false", 5)) r->kind = 3;
    else return 0;
    return 1;
  }
  if (!strcmp(key, "error")) return *v == '{' && members(v, vend, error_member, r);
  return 1;
}

/* ------------------------------------------------------------------ main */

/* The pull is not this client's: the Node CLI runs it (same arguments), or exit 100 when none is named. */
static int not_taken(void) {
  const char *bundle = getenv("DFNODE_BUNDLE");
  if (!bundle || !*bundle) return NOT_TAKEN;
  int n = 0;
  while (all_args[n]) n++;
  char **args = calloc((size_t)n + 2, sizeof *args);
  if (!args) return NOT_TAKEN;
  args[0] = "node";
  args[1] = strdup(bundle);
  for (int i = 1; i < n; i++) args[i + 1] = all_args[i];
  unsetenv("DFNODE_BUNDLE");
  if (sock_fd >= 0) close(sock_fd);
  execvp("node", args);
  fprintf(stderr, "dfnode: error: cannot run node: %s\n", strerror(errno));
  return 127;
}

static const char *value_of(int argc, char **argv, int *i, const char *name) {
  size_t n = strlen(name);
  if (!strncmp(argv[*i], name, n) && argv[*i][n] == '=') return argv[*i] + n + 1;
  if (strcmp(argv[*i], name)) return NULL;
  if (*i + 1 >= argc) exit(not_taken());
  return argv[++*i];
}

int main(int argc, char **argv) {
  all_args = argv;
  if (argc < 2 || strcmp(argv[1], "pull")) return not_taken();
  if (getenv("DFNODE_CONFIG") && *getenv("DFNODE_CONFIG")) return not_taken();
  const char *ref = NULL, *address = NULL, *ns = NULL, *snapshotter = NULL, *platform = NULL;
  const char *socket_path = DEFAULT_SOCKET;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *v;
    if (a[0] != '-' || !strcmp(a, "-")) {
      if (ref) return not_taken();
      ref = a;
    } else if ((v = value_of(argc, argv, &i, "--address"))) address = v;
    else if ((v = value_of(argc, argv, &i, "--namespace")) || (v = value_of(argc, argv, &i, "-n"))) ns = v;
    else if ((v = value_of(argc, argv, &i, "--snapshotter"))) snapshotter = v;
    else if ((v = value_of(argc, argv, &i, "--platform"))) platform = v;
    else if ((v = value_of(argc, argv, &i, "--control-socket"))) socket_path = v;
    /* registry flags: through the daemon its own registry settings apply (as in the Node CLI) */
    else if (!strcmp(a, "--plain-http")) continue;
    else if ((v = value_of(argc, argv, &i, "--insecure"))) continue;
    else return not_taken();
  }
  if (!ref || !*ref) return not_taken();

  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(socket_path) >= sizeof sa.sun_path) return not_taken();
  strcpy(sa.sun_path, socket_path);
  sock_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock_fd < 0) return not_taken();
  if (connect(sock_fd, (struct sockaddr *)&sa, sizeof sa) < 0) return not_taken();

  struct sigaction act = {.sa_handler = on_signal};
  sigaction(SIGINT, &act, NULL);
  sigaction(SIGTERM, &act, NULL);
  signal(SIGPIPE, SIG_IGN);

  struct buf req = {0};
  PUT(&req, "{\"v\":1,\"command\":\"pull\",\"args\":{\"ref\":");
  puts_json(&req, ref);
  if (address) PUT(&req, ",\"address\":"), puts_json(&req, address);
  if (ns) PUT(&req, ",\"namespace\":"), puts_json(&req, ns);
  if (snapshotter) PUT(&req, ",\"snapshotter\":"), puts_json(&req, snapshotter);
  if (platform) PUT(&req, ",\"platform\":"), puts_json(&req, platform);
  PUT(&req, "}}\n");
  for (size_t off = 0; off < req.len;) {
    ssize_t n = write(sock_fd, req.p + off, req.len - off);
    if (n < 0 && errno == EINTR && !interrupted) continue;
    if (n <= 0) break;
    off += (size_t)n;
  }

  char *line = malloc(MAX_LINE + 1);
  if (!line) fail(EXIT_CORRUPT, "%s%s", "out of memory", "");
  size_t have = 0;
  for (;;) {
    char *nl = memchr(line, '\n', have);
    if (!nl) {
      if (have >= MAX_LINE)
        fail(EXIT_CORRUPT, "control socket reply: a line longer than %s bytes from %s", "1048576", socket_path);
      ssize_t n = read(sock_fd, line + have, MAX_LINE - have);
      if (n < 0 && errno == EINTR && !interrupted) continue;
      if (interrupted) {
        fprintf(stderr, "\ndfnode: %s received, stopping...\n", interrupted == SIGINT ? "SIGINT" : "SIGTERM");
        fail(EXIT_ABORTED, "interrupted by %s%s", interrupted == SIGINT ? "SIGINT" : "SIGTERM", "");
      }
      if (n <= 0)
        fail(EXIT_NETWORK, "dfnode run closed the control connection on %s before answering %s", socket_path, "pull");
      have += (size_t)n;
      continue;
    }
    struct reply r = {0};
    if (!members(line, nl, reply_member, &r) || r.kind == 0 || (r.kind == 3 && !r.text.p)) {
      *nl = 0;
      fail(EXIT_CORRUPT, "control socket: unexpected reply from the daemon: %.200s%s", line, "");
    }
    if (r.kind == 1) {
      fwrite(r.text.p ? r.text.p : "", 1, r.text.len, stdout);
      fputc('\n', stdout);
      fflush(stdout);
    } else if (r.kind == 2) {
      return 0;
    } else {
      fflush(stdout);
      fail(r.exit_code ? r.exit_code : 1, "%s%s", r.text.p, "");
    }
    free(r.text.p);
    free(r.code.p);
    size_t used = (size_t)(nl + 1 - line);
    memmove(line, nl + 1, have - used);
    have -= used;
  }
}
