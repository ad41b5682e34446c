/* Process set-up: scheduling priority (cpushare.raise_priority), signals, command-line values.
 *
 * Part of truthserver.c, which is one translation unit: it includes this file once, after its system
 * headers and constants (split only to keep each file short; cbuild hashes every file of the server).
 */
#ifndef TB_TRUTHPROC_H
#define TB_TRUTHPROC_H

/* ---- process set-up: priority (cpushare.raise_priority), timer slack, flags ------------------- */
static int raise_priority(int nice) {
    setpriority(PRIO_PROCESS, 0, nice);
    pid_t sid = getsid(0);
    if ((sid == getpid() || sid == getppid()) && access("/proc/self/autogroup", F_OK) == 0) {
        FILE *fh = fopen("/proc/self/autogroup", "w");
        if (!fh) return 0;
        int ok = fprintf(fh, "%d\n", nice) > 0;
        ok = (fclose(fh) == 0) && ok;
        if (!ok) return 0; /* the group's share is unchanged, whatever the process's own nice */
        char text[256] = {0};
        fh = fopen("/proc/self/autogroup", "r");
        if (!fh) return 0;
        size_t n = fread(text, 1, sizeof text - 1, fh);
        fclose(fh);
        text[n] = 0;
        char *at = NULL;
        for (char *p = strstr(text, "nice"); p; p = strstr(p + 4, "nice")) at = p + 4;
        char *stop;
        long v = at ? strtol(at, &stop, 10) : 0;
        return at && stop != at ? (int)v : 0;
    }
    errno = 0;
    return getpriority(PRIO_PROCESS, 0);
}

static void on_signal(int sig) {
    (void)sig;
    running = 0;
}

static void usage_exit(const char *msg) {
    fprintf(stderr,
            "usage: tokenbench-truthserver --port PORT [--ttft-ms MS] [--itl-ms MS] --log PATH [--nice N] [--congestion NAME]\n"
            "tokenbench-truthserver: error: %s\n",
            msg);
    exit(2);
}

static double num_arg(const char *flag, const char *v, int integer) {
    char *stop;
    errno = 0;
    double d = integer ? (double)strtol(v, &stop, 10) : strtod(v, &stop);
    if (!*v || *stop || errno || !isfinite(d)) {
        char msg[256];
        snprintf(msg, sizeof msg, "argument %s: invalid %s value: '%s'", flag, integer ? "int" : "float", v);
        usage_exit(msg);
    }
    return d;
}

#endif
