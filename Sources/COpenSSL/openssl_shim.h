/* Exposes the system's OpenSSL (libssl-dev) to Swift. OpenSSL spells many calls as function-like
 * macros, which Swift does not import: these inline functions give them a callable form. */
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

static inline long goxelpool_ssl_set_sni(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name);
}
static inline long goxelpool_ssl_ctx_set_min_version(SSL_CTX *ctx, int version) {
    return SSL_CTX_set_min_proto_version(ctx, version);
}
static inline long goxelpool_ssl_ctx_set_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_mode(ctx, mode);
}
static inline long goxelpool_ssl_ctx_set_session_cache_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_session_cache_mode(ctx, mode);
}
static inline void goxelpool_bio_set_retry_read(BIO *bio) { BIO_set_retry_read(bio); }
static inline void goxelpool_bio_set_retry_write(BIO *bio) { BIO_set_retry_write(bio); }
static inline void goxelpool_bio_clear_retry(BIO *bio) { BIO_clear_retry_flags(bio); }
static inline int goxelpool_err_reason(unsigned long code) { return ERR_GET_REASON(code); }
/* SSL_OP_* are built with a function-like macro (SSL_OP_BIT). */
static inline uint64_t goxelpool_ssl_client_options(void) {
    /* EOF without close_notify reads as a clean EOF: answers are framed by lines, so a cut-off
     * answer is still seen (a line without its newline). No renegotiation: TLS 1.3 has none, and
     * a 1.2 server asking for one mid-call would need reads inside writes. */
    return SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION;
}
static inline long goxelpool_ssl_ctx_set_read_ahead(SSL_CTX *ctx, int on) {
    return SSL_CTX_set_read_ahead(ctx, on);
}
