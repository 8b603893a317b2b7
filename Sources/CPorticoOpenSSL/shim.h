// The system's OpenSSL (Debian's libssl-dev), for the fleet simulator's TLS client: fresh
// connections that resume their sessions, as agents in the field do.
#ifndef C_PORTICO_OPENSSL_H
#define C_PORTICO_OPENSSL_H

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
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

static inline long CPorticoOpenSSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name);
}

#endif
