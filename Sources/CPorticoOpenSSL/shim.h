// The system's OpenSSL (Debian's libssl-dev): the TLS of every listener, and the fleet
// simulator's TLS client (fresh connections that resume their sessions, as agents do).
#ifndef C_PORTICO_OPENSSL_H
#define C_PORTICO_OPENSSL_H

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>

// Macros Swift cannot call.
static inline long CPorticoOpenSSL_set_min_proto_version(SSL_CTX *context, int version) {
    return SSL_CTX_set_min_proto_version(context, version);
}

static inline long CPorticoOpenSSL_set_max_proto_version(SSL_CTX *context, int version) {
    return SSL_CTX_set_max_proto_version(context, version);
}

static inline long CPorticoOpenSSL_set_session_cache_mode(SSL_CTX *context, long mode) {
    return SSL_CTX_set_session_cache_mode(context, mode);
}

static inline long CPorticoOpenSSL_set_session_cache_size(SSL_CTX *context, long size) {
    return SSL_CTX_sess_set_cache_size(context, size);
}

// The server's options: no renegotiation (a client could make it redo handshakes at will),
// and its own order of cipher suites. (The option bits are macros Swift cannot import.)
static inline uint64_t CPorticoOpenSSL_set_server_options(SSL_CTX *context) {
    return SSL_CTX_set_options(context, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
}

static inline long CPorticoOpenSSL_set_mode(SSL_CTX *context, long mode) {
    return SSL_CTX_set_mode(context, mode);
}

static inline long CPorticoOpenSSL_add1_chain_cert(SSL_CTX *context, X509 *certificate) {
    return SSL_CTX_add1_chain_cert(context, certificate);
}

static inline long CPorticoOpenSSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name);
}

// A BIO of our own says "nothing to read now, try again" (not end of stream), or clears it.
static inline void CPorticoOpenSSL_set_retry_read(BIO *bio) {
    BIO_set_retry_read(bio);
}

static inline void CPorticoOpenSSL_clear_retry_flags(BIO *bio) {
    BIO_clear_retry_flags(bio);
}

static inline void CPorticoOpenSSL_free(void *pointer) {
    OPENSSL_free(pointer);
}

// Keys a session ticket's HMAC (SHA-256) with `key`: the part of a ticket key callback that
// builds OSSL_PARAMs, which Swift cannot construct as C does.
static inline int CPorticoOpenSSL_ticket_hmac(EVP_MAC_CTX *mac, unsigned char *key, size_t length) {
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key, length);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    return EVP_MAC_CTX_set_params(mac, params);
}

#endif
