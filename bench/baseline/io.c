/*
 * io: the cold-start baseline for the local file store and for the sealed cache. For each of N
 * policies it does the file I/O keyturn's bundle writer does, and nothing else: no
 * configuration, no runtime, no logging, no status file.
 *
 *   io STORE_DIR RUNTIME_DIR N
 *   io --sealed KEY_FILE CACHE_DIR RUNTIME_DIR N
 *
 * Policy i reads secret "sIIII" from the store layout keyturn documents (DIR/ID/secret.json,
 * then DIR/ID/versions/V for the version the "current" alias names, checked against the
 * CRC32C recorded for it) or, with --sealed, opens the sealed cache entry CACHE_DIR/pIIII.sealed
 * (the header parsed, AES-256-GCM with the 32-byte raw key and the header as associated data,
 * OpenSSL's EVP; the value's CRC32C checked), and delivers it as the one file "value" of
 * bundle "bIIII":
 *
 *   mkdir bundle (first delivery) ; mkdir ..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN
 *   create value (O_EXCL, mode 0400) ; write ; fsync
 *   create ..keyturn.json (O_EXCL, mode 0400) ; write ; fsync
 *   fsync the version directory
 *   symlink value -> ..data/value (first delivery)
 *   symlink ..data_tmp -> the version directory ; rename ..data_tmp -> ..data
 *   fsync the bundle directory
 *
 * and, once at the end, fsyncs the runtime directory. Exit status 0 when every policy was
 * delivered. Written from the documented layout and from looking at files keyturn made,
 * not from keyturn's source.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <openssl/evp.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uint32_t crc_table[256];

static void crc32c_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t crc = i;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ ((crc & 1) ? 0x82F63B78u : 0);
        crc_table[i] = crc;
    }
}

static uint32_t crc32c(const unsigned char *data, size_t len) {
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) crc = (crc >> 8) ^ crc_table[(crc ^ data[i]) & 0xFF];
    return crc ^ 0xFFFFFFFFu;
}

static void fail(const char *what, const char *path) {
    fprintf(stderr, "io: %s %s: %s\n", what, path, strerror(errno));
    exit(1);
}

/* Reads a whole small file into buf; returns its length. */
static size_t read_file(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("open", path);
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0) fail("read", path);
        if (n == 0) break;
        len += (size_t)n;
        if (len == cap - 1) break;
    }
    close(fd);
    buf[len] = 0;
    return len;
}

static void write_new(int dir, const char *name, const char *data, size_t len) {
    int fd = openat(dir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0400);
    if (fd < 0) fail("create", name);
    if (write(fd, data, len) != (ssize_t)len) fail("write", name);
    if (fsync(fd) != 0) fail("fsync", name);
    close(fd);
}

/* The string value of "key": "VALUE" after position `from`, copied into out. */
static int json_string_after(const char *from, const char *key, char *out, size_t cap) {
    char needle[64];
    snprintf(needle, sizeof needle, "\"%s\"", key);
    const char *at = strstr(from, needle);
    if (!at) return -1;
    at = strchr(at + strlen(needle), '"');
    if (!at) return -1;
    const char *end = strchr(at + 1, '"');
    if (!end || (size_t)(end - at - 1) >= cap) return -1;
    memcpy(out, at + 1, (size_t)(end - at - 1));
    out[end - at - 1] = 0;
    return 0;
}

/* Policy i from the file store: its current version's value and id, checked. */
static size_t read_store(const char *store, int i, char *value, size_t cap, char *version, size_t version_cap,
                         uint32_t *crc) {
    static char meta[1 << 16];
    char path[4096], crc_key[48];
    snprintf(path, sizeof path, "%s/s%04d/secret.json", store, i);
    read_file(path, meta, sizeof meta);
    const char *aliases = strstr(meta, "\"aliases\"");
    if (!aliases || json_string_after(aliases, "current", version, version_cap) != 0) {
        fprintf(stderr, "io: %s: no current alias\n", path);
        exit(1);
    }
    snprintf(path, sizeof path, "%s/s%04d/versions/%s", store, i, version);
    size_t len = read_file(path, value, cap);
    const char *versions = strstr(meta, "\"versions\"");
    snprintf(crc_key, sizeof crc_key, "\"%s\"", version);
    const char *entry = versions ? strstr(versions, crc_key) : NULL;
    const char *crc_at = entry ? strstr(entry, "\"crc32c\"") : NULL;
    *crc = crc32c((const unsigned char *)value, len);
    if (!crc_at || strtoul(strchr(crc_at + 8, ':') + 1, NULL, 10) != *crc) {
        fprintf(stderr, "io: %s: checksum mismatch\n", path);
        exit(1);
    }
    return len;
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Policy i from the sealed cache: the entry's header (magic, u16 format, then key id, node,
 * policy, store, secret, version and inputs as u32-length-prefixed strings, then u64 sealed
 * at) is the associated data; then a 12-byte nonce, the ciphertext and a 16-byte tag. The
 * plaintext starts with the u32-length-prefixed value and its u32 CRC32C. */
static size_t read_sealed(const unsigned char *key, const char *cache, int i, char *value, size_t cap,
                          char *version, size_t version_cap, uint32_t *crc) {
    static unsigned char file[1 << 17], plain[1 << 17];
    static const char magic[] = "KEYTURN-CACHE\n";
    char path[4096];
    snprintf(path, sizeof path, "%s/p%04d.sealed", cache, i);
    size_t len = read_file(path, (char *)file, sizeof file);
    size_t at = sizeof magic - 1 + 2;
    if (len < at || memcmp(file, magic, sizeof magic - 1) != 0) goto damaged;
    for (int field = 0; field < 7; field++) {
        if (at + 4 > len) goto damaged;
        uint32_t n = be32(file + at);
        if (at + 4 + n > len) goto damaged;
        if (field == 5) {
            if (n >= version_cap) goto damaged;
            memcpy(version, file + at + 4, n);
            version[n] = 0;
        }
        at += 4 + n;
    }
    at += 8;
    if (at + 12 + 16 > len) goto damaged;
    size_t aad = at, sealed = len - aad - 12 - 16;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int out = 0, last = 0;
    if (!ctx || EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_DecryptInit_ex(ctx, NULL, NULL, key, file + aad) != 1 ||
        EVP_DecryptUpdate(ctx, NULL, &out, file, (int)aad) != 1 ||
        EVP_DecryptUpdate(ctx, plain, &out, file + aad + 12, (int)sealed) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, file + len - 16) != 1 ||
        EVP_DecryptFinal_ex(ctx, plain + out, &last) != 1) {
        fprintf(stderr, "io: %s: does not authenticate\n", path);
        exit(1);
    }
    EVP_CIPHER_CTX_free(ctx);
    if (sealed < 4) goto damaged;
    uint32_t n = be32(plain);
    if (4 + (size_t)n + 4 > sealed || n >= cap) goto damaged;
    memcpy(value, plain + 4, n);
    *crc = crc32c((const unsigned char *)value, n);
    if (be32(plain + 4 + n) != *crc) goto damaged;
    memset(plain, 0, sealed);
    return n;
damaged:
    fprintf(stderr, "io: %s: damaged entry\n", path);
    exit(1);
}

/* Delivers value as bundle "bIIII": a whole new version directory, then one rename. */
static void deliver(int runtime_fd, int i, const char *value, size_t len, const char *version, uint32_t crc) {
    static char manifest[1024];
    char bundle[32], version_dir[64];
    snprintf(bundle, sizeof bundle, "b%04d", i);
    if (mkdirat(runtime_fd, bundle, 0755) != 0 && errno != EEXIST) fail("mkdir", bundle);
    int bundle_fd = openat(runtime_fd, bundle, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (bundle_fd < 0) fail("open", bundle);

    struct timespec now;
    struct tm utc;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &utc);
    snprintf(version_dir, sizeof version_dir, "..%04d_%02d_%02d_%02d_%02d_%02d.%09ld", utc.tm_year + 1900,
             utc.tm_mon + 1, utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, now.tv_nsec);
    if (mkdirat(bundle_fd, version_dir, 0755) != 0) fail("mkdir", version_dir);
    int version_fd = openat(bundle_fd, version_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (version_fd < 0) fail("open", version_dir);

    write_new(version_fd, "value", value, len);
    char at[32];
    strftime(at, sizeof at, "%Y-%m-%dT%H:%M:%SZ", &utc);
    int manifest_len = snprintf(manifest, sizeof manifest,
                                "{\n  \"policies\": {\n    \"p%04d\": {\n      \"version\": \"%s\",\n"
                                "      \"crc32c\": %u,\n      \"spec\": 3339692680,\n      \"files\": [\n"
                                "        \"value\"\n      ],\n      \"at\": \"%s\"\n    }\n  }\n}",
                                i, version, crc, at);
    write_new(version_fd, "..keyturn.json", manifest, (size_t)manifest_len);
    if (fsync(version_fd) != 0) fail("fsync", version_dir);
    close(version_fd);

    if (symlinkat("..data/value", bundle_fd, "value") != 0 && errno != EEXIST) fail("symlink", "value");
    if (symlinkat(version_dir, bundle_fd, "..data_tmp") != 0) fail("symlink", "..data_tmp");
    if (renameat(bundle_fd, "..data_tmp", bundle_fd, "..data") != 0) fail("rename", "..data");
    if (fsync(bundle_fd) != 0) fail("fsync", bundle);
    close(bundle_fd);
}

int main(int argc, char **argv) {
    int sealed = argc == 6 && strcmp(argv[1], "--sealed") == 0;
    if (argc != 4 && !sealed) {
        fprintf(stderr, "usage: io STORE_DIR RUNTIME_DIR N\n       io --sealed KEY_FILE CACHE_DIR RUNTIME_DIR N\n");
        return 64;
    }
    const char *source = argv[sealed ? 3 : 1], *runtime = argv[sealed ? 4 : 2];
    int count = atoi(argv[sealed ? 5 : 3]);
    unsigned char key[34];
    if (sealed && read_file(argv[2], (char *)key, sizeof key) != 32) {
        fprintf(stderr, "io: %s: not a 32-byte raw key\n", argv[2]);
        return 1;
    }
    crc32c_init();

    if (mkdir(runtime, 0755) != 0 && errno != EEXIST) fail("mkdir", runtime);
    int runtime_fd = open(runtime, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (runtime_fd < 0) fail("open", runtime);

    static char value[1 << 16];
    char version[32];
    uint32_t crc;
    for (int i = 0; i < count; i++) {
        size_t len = sealed ? read_sealed(key, source, i, value, sizeof value, version, sizeof version, &crc)
                            : read_store(source, i, value, sizeof value, version, sizeof version, &crc);
        deliver(runtime_fd, i, value, len, version, crc);
    }
    if (fsync(runtime_fd) != 0) fail("fsync", runtime);
    close(runtime_fd);
    return 0;
}
