#ifndef PORTICO_LDAP_SHIM_H
#define PORTICO_LDAP_SHIM_H
#include <ldap.h>
#include <lber.h>
#include <sys/time.h>

// Macros Swift cannot import, as functions.
static inline int portico_ldap_simple_bind(LDAP *ld, const char *dn, const char *password, size_t length, int *code_out) {
    struct berval credentials;
    credentials.bv_val = (char *)password;
    credentials.bv_len = length;
    return ldap_sasl_bind_s(ld, dn, LDAP_SASL_SIMPLE, &credentials, NULL, NULL, NULL);
}
static inline int portico_ldap_tls_minimum_1_2(LDAP *ld) {
    int version = LDAP_OPT_X_TLS_PROTOCOL_TLS1_2;
    return ldap_set_option(ld, LDAP_OPT_X_TLS_PROTOCOL_MIN, &version);
}
static inline int portico_ldap_set_int(LDAP *ld, int option, int value) { return ldap_set_option(ld, option, &value); }
static inline int portico_ldap_set_timeout(LDAP *ld, int option, long seconds) {
    struct timeval timeout = { seconds, 0 };
    return ldap_set_option(ld, option, &timeout);
}
static inline int portico_ldap_set_string(LDAP *ld, int option, const char *value) { return ldap_set_option(ld, option, value); }
static inline char *portico_ldap_diagnostic(LDAP *ld) {
    char *message = NULL;
    ldap_get_option(ld, LDAP_OPT_DIAGNOSTIC_MESSAGE, &message);
    return message;
}
#endif
