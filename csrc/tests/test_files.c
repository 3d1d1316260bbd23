/* test_files.c — C unit tests of safe file writing (ml__write_atomic in csrc/io/weights.c,
 * used by weight files and memory files): threads and processes saving to one path at once
 * all succeed and leave one complete save; a symbolic link keeps pointing at the replaced
 * file (also a dangling one); 250- and 255-byte file names work; a directory, a character
 * device (/dev/null's) and a FIFO are refused and left as they are; a save that fails (file-size limit) leaves the
 * old file and no temporary file; no temporary file remains after a success; the loader
 * refuses a FIFO without waiting for a writer and a name holding a NUL byte.
 * Runs under ASan + UBSan in CI (`make -C csrc sanitize`). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/internal.h"
#include "io/io.h"
#include "metalearn.h"

static int n_pass, n_fail;

#define CHECK(cond, ...)                                          \
    do {                                                          \
        if (cond) n_pass++;                                       \
        else {                                                    \
            n_fail++;                                             \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);           \
            printf(__VA_ARGS__);                                  \
            printf("\n");                                         \
        }                                                         \
    } while (0)

static char dir[256];

static const char *at(const char *name) { /* dir/name, in one of 16 rotating buffers */
    static char bufs[16][1024];
    static int k;
    char *b = bufs[k++ & 15];
    snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
    return b;
}

/* Entries of `d` other than . and .. whose name starts with ".mlw." (temporary files). */
static int count_tmp(const char *d) {
    DIR *h = opendir(d);
    int n = 0;
    if (!h) return -1;
    for (struct dirent *e; (e = readdir(h));)
        if (!strncmp(e->d_name, ".mlw.", 5)) n++;
    closedir(h);
    return n;
}

static ml_tensor *filled(int64_t n, float v) {
    ml_tensor *t = NULL;
    int64_t shape[1] = {n};
    if (ml_tensor_zeros(&t, 1, shape)) return NULL;
    for (int64_t i = 0; i < n; i++) ml_data(t)[i] = v;
    return t;
}

static ml_status save_value(const char *path, int64_t n, float v) {
    ml_tensor *t = filled(n, v);
    const char *name = "w";
    ml_status st = ml_save_tensors(path, 1, &name, &t);
    ml_release(t);
    return st;
}

/* The value a file holds (-1: it does not load, -2: its values are not all the same). */
static float load_value(const char *path) {
    int n = 0;
    char **names = NULL;
    ml_tensor **ts = NULL;
    if (ml_load_tensors(path, &n, &names, &ts) != ML_OK) return -1;
    float v = n == 1 ? ml_data(ts[0])[0] : -2;
    for (int64_t i = 0; n == 1 && i < ml_numel(ts[0]); i++)
        if (ml_data(ts[0])[i] != v) v = -2;
    ml_free_loaded(n, names, ts);
    return v;
}

/* ------------------------------------------------------------- concurrent saves */

#define SAVES 40
typedef struct {
    const char *path;
    float value;
    int failed;
} saver_arg;

static void *saver(void *p) {
    saver_arg *a = p;
    for (int i = 0; i < SAVES; i++)
        if (save_value(a->path, 4096, a->value) != ML_OK) a->failed++;
    return NULL;
}

static void test_threads_one_path(void) {
    const char *path = at("threads.mlw");
    saver_arg args[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (saver_arg){path, (float)(i + 1), 0};
        pthread_create(&th[i], NULL, saver, &args[i]);
    }
    int failed = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        failed += args[i].failed;
    }
    CHECK(failed == 0, "4 threads x %d saves to one path: %d failed (%s)", SAVES, failed,
          ml_last_error());
    float v = load_value(path);
    CHECK(v == 1 || v == 2 || v == 3 || v == 4, "the file holds one whole save (got %g)", v);
    CHECK(count_tmp(dir) == 0, "no temporary file left (%d)", count_tmp(dir));
    unlink(path);
}

static void test_processes_one_path(void) {
    const char *path = at("procs.mlw");
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        if ((kids[k] = fork()) == 0) {
            int bad = 0;
            for (int i = 0; i < SAVES; i++) bad += save_value(path, 4096, (float)(10 + k)) != ML_OK;
            _exit(bad ? 1 : 0);
        }
    }
    int ok = 1;
    for (int k = 0; k < 2; k++) {
        int status = 0;
        waitpid(kids[k], &status, 0);
        ok &= WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    CHECK(ok, "2 processes x %d saves to one path: some failed", SAVES);
    float v = load_value(path);
    CHECK(v == 10 || v == 11, "the file holds one whole save (got %g)", v);
    CHECK(count_tmp(dir) == 0, "no temporary file left (%d)", count_tmp(dir));
    unlink(path);
}

/* ------------------------------------------------------------- links and names */

static void test_links(void) {
    const char *target = at("target.mlw"), *link = at("link.mlw");
    CHECK(save_value(target, 3, 1) == ML_OK, "save: %s", ml_last_error());
    CHECK(symlink("target.mlw", link) == 0, "symlink");
    CHECK(save_value(link, 3, 2) == ML_OK, "save through a link: %s", ml_last_error());
    struct stat sb;
    CHECK(lstat(link, &sb) == 0 && S_ISLNK(sb.st_mode), "the link is still a link");
    CHECK(load_value(target) == 2, "its target holds the new save");
    /* a chain of two links, the second relative to a subdirectory */
    const char *sub = at("sub"), *inner = at("sub/inner.mlw"), *chain = at("chain.mlw");
    CHECK(mkdir(sub, 0755) == 0, "mkdir");
    CHECK(symlink("../target.mlw", inner) == 0 && symlink("sub/inner.mlw", chain) == 0, "links");
    CHECK(save_value(chain, 3, 3) == ML_OK, "save through two links: %s", ml_last_error());
    CHECK(load_value(target) == 3, "the end of the chain holds the save");
    CHECK(lstat(chain, &sb) == 0 && S_ISLNK(sb.st_mode) && lstat(inner, &sb) == 0 &&
              S_ISLNK(sb.st_mode),
          "both links kept");
    /* a dangling link: the file it names is created, as shell redirection does */
    const char *dangling = at("dangling.mlw"), *made = at("sub/made.mlw");
    CHECK(symlink("sub/made.mlw", dangling) == 0, "symlink");
    CHECK(save_value(dangling, 3, 4) == ML_OK, "save through a dangling link: %s", ml_last_error());
    CHECK(lstat(dangling, &sb) == 0 && S_ISLNK(sb.st_mode) && load_value(made) == 4,
          "the named file was created and the link kept");
    /* a loop is an error, not a hang */
    const char *loop = at("loop.mlw");
    CHECK(symlink("loop.mlw", loop) == 0, "symlink");
    CHECK(save_value(loop, 3, 5) == ML_ERR_IO, "a link loop is refused");
    CHECK(count_tmp(dir) == 0 && count_tmp(sub) == 0, "no temporary file left");
    unlink(loop), unlink(dangling), unlink(made), unlink(chain), unlink(inner), rmdir(sub);
    unlink(link), unlink(target);
}

static void test_long_names(void) {
    for (int len = 250; len <= 255; len += 5) {
        char name[256];
        memset(name, 'n', (size_t)len);
        name[len] = 0;
        const char *path = at(name);
        CHECK(save_value(path, 3, 7) == ML_OK, "a %d-byte file name: %s", len, ml_last_error());
        CHECK(save_value(path, 3, 8) == ML_OK && load_value(path) == 8, "and saved over");
        unlink(path);
    }
    CHECK(count_tmp(dir) == 0, "no temporary file left");
}

/* ------------------------------------------------------------- special files */

static void test_special_files(void) {
    /* Run as root, a regression would replace /dev/null itself for every process on the
     * machine: root saves over its own node of /dev/null's device (1, 3) instead. */
    const char *dev = "/dev/null";
    if (geteuid() == 0) {
        dev = at("null");
        CHECK(mknod(dev, S_IFCHR | 0666, makedev(1, 3)) == 0, "mknod: %s", strerror(errno));
    }
    struct stat before, after;
    CHECK(stat(dev, &before) == 0 && S_ISCHR(before.st_mode), "stat %s", dev);
    CHECK(save_value(dev, 3, 1) == ML_ERR_IO, "a character device refused");
    CHECK(strstr(ml_last_error(), "character device") != NULL, "the message says why: %s",
          ml_last_error());
    CHECK(stat(dev, &after) == 0 && S_ISCHR(after.st_mode) && after.st_rdev == before.st_rdev &&
              after.st_ino == before.st_ino,
          "the device is still there");
    const char *fifo = at("fifo");
    CHECK(mkfifo(fifo, 0644) == 0, "mkfifo");
    CHECK(save_value(fifo, 3, 1) == ML_ERR_IO, "a FIFO refused");
    CHECK(stat(fifo, &after) == 0 && S_ISFIFO(after.st_mode), "the FIFO is still there");
    /* the loader must not wait for a writer to open the FIFO */
    int n = 0;
    char **names = NULL;
    ml_tensor **ts = NULL;
    CHECK(ml_load_tensors(fifo, &n, &names, &ts) == ML_ERR_IO, "loading a FIFO refused");
    const char *d = at("adir");
    CHECK(mkdir(d, 0755) == 0, "mkdir");
    CHECK(save_value(d, 3, 1) == ML_ERR_IO, "a directory refused");
    CHECK(stat(d, &after) == 0 && S_ISDIR(after.st_mode), "the directory is still there");
    /* a link to /dev/null is followed, then refused (a regression replaces the link) */
    const char *lnull = at("lnull");
    CHECK(symlink("/dev/null", lnull) == 0, "symlink");
    CHECK(save_value(lnull, 3, 1) == ML_ERR_IO, "a link to /dev/null refused");
    CHECK(lstat(lnull, &after) == 0 && S_ISLNK(after.st_mode), "the link is still a link");
    CHECK(count_tmp(dir) == 0, "no temporary file left");
    CHECK(stat("/dev/null", &after) == 0 && S_ISCHR(after.st_mode), "/dev/null untouched");
    unlink(lnull), rmdir(d), unlink(fifo);
    if (geteuid() == 0) unlink(dev);
}

/* ------------------------------------------------------------- failures */

/* RLIMIT_FSIZE makes write() fail with EFBIG part-way through (SIGXFSZ ignored): a full
 * disk as the process sees it. */
static void test_failed_write_keeps_the_old_file(void) {
    const char *path = at("full.mlw");
    CHECK(save_value(path, 10, 1) == ML_OK, "save: %s", ml_last_error());
    struct stat b0;
    stat(path, &b0);
    struct rlimit old;
    getrlimit(RLIMIT_FSIZE, &old);
    struct rlimit lim = {4096, old.rlim_max};
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0, "setrlimit");
    ml_status st = save_value(path, 100000, 2); /* 400 KB > 4 KB */
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    CHECK(st == ML_ERR_IO, "the save reports the failure (%d)", (int)st);
    CHECK(strstr(ml_last_error(), "unchanged") != NULL, "the message says the file is kept: %s",
          ml_last_error());
    CHECK(load_value(path) == 1, "the old file is intact");
    struct stat b1;
    CHECK(stat(path, &b1) == 0 && b1.st_ino == b0.st_ino, "and was not replaced");
    CHECK(count_tmp(dir) == 0, "no temporary file left (%d)", count_tmp(dir));
    /* the same through a memory file */
    ml_memory *m = NULL;
    CHECK(ml_memory_new(&m, 20000, 8, 0, 1) == ML_OK, "memory");
    float keys[8 * 64];
    int64_t labels[64];
    for (int i = 0; i < 8 * 64; i++) keys[i] = (float)((i * 37) % 11) - 5.0f;
    for (int i = 0; i < 64; i++) labels[i] = i;
    const char *mpath = at("mem.mlm");
    CHECK(ml_memory_update(m, 64, keys, labels, NULL) == ML_OK, "update: %s", ml_last_error());
    CHECK(ml_memory_save(m, mpath) == ML_OK, "memory save: %s", ml_last_error());
    struct stat m0, m1;
    stat(mpath, &m0);
    lim.rlim_cur = 1024;
    signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &lim);
    st = ml_memory_save(m, mpath);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    CHECK(st == ML_ERR_IO, "the memory save reports the failure");
    CHECK(stat(mpath, &m1) == 0 && m1.st_ino == m0.st_ino && m1.st_size == m0.st_size,
          "the old memory file is intact");
    CHECK(count_tmp(dir) == 0, "no temporary file left");
    ml_memory_free(m);
    unlink(mpath), unlink(path);
}

static void test_missing_directory(void) {
    CHECK(save_value(at("no/such/dir.mlw"), 3, 1) == ML_ERR_IO, "a missing directory refused");
    CHECK(strstr(ml_last_error(), "no/such/dir.mlw") != NULL, "the message names the path: %s",
          ml_last_error());
}

static void test_permissions_kept(void) {
    const char *path = at("private.mlw");
    CHECK(save_value(path, 3, 1) == ML_OK, "save");
    chmod(path, 0600);
    CHECK(save_value(path, 3, 2) == ML_OK, "save over");
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0600, "a 0600 file stays 0600 (%o)",
          (unsigned)(sb.st_mode & 0777));
    unlink(path);
}

/* A file whose name holds a NUL byte (valid checksum) is refused: it would load cut short. */
static void test_nul_in_loaded_name(void) {
    uint8_t buf[64], *p = buf;
    memcpy(p, "MLWEIGHT", 8), p += 8;
    ml__put_u32(p, 1), p += 4;
    ml__put_u32(p, 1), p += 4;
    ml__put_u32(p, 3), p += 4;
    memcpy(p, "a\0b", 3), p += 3;
    ml__put_u32(p, 0), p += 4; /* a scalar */
    ml__put_u32(p, 0x3f800000u), p += 4;
    ml__put_u32(p, ml_crc32(0, buf, (size_t)(p - buf))), p += 4;
    const char *path = at("nul.mlw");
    CHECK(ml__write_atomic(path, buf, (size_t)(p - buf)) == ML_OK, "write");
    int n = 0;
    char **names = NULL;
    ml_tensor **ts = NULL;
    CHECK(ml_load_tensors(path, &n, &names, &ts) == ML_ERR_FORMAT, "a NUL in a name refused");
    unlink(path);
}

int main(void) {
    snprintf(dir, sizeof dir, "%s/ml-files-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_threads_one_path();
    test_processes_one_path();
    test_links();
    test_long_names();
    test_special_files();
    test_failed_write_keeps_the_old_file();
    test_missing_directory();
    test_permissions_kept();
    test_nul_in_loaded_name();
    CHECK(count_tmp(dir) == 0, "no temporary file left at the end");
    rmdir(dir);
    CHECK(access(dir, F_OK) != 0, "the test directory is empty and removed");
    printf("test_files: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
