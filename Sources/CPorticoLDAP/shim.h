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
// Active Directory's own password change: unicodePwd deleted (the old value) and added (the
// new), each the quoted password in UTF-16LE, in one modify; the server applies its policy.
static inline int portico_ldap_modify_unicode_pwd(LDAP *ld, const char *dn, char *old_value, size_t old_length, char *new_value, size_t new_length) {
    struct berval old_berval = { (ber_len_t)old_length, old_value };
    struct berval new_berval = { (ber_len_t)new_length, new_value };
    struct berval *old_values[] = { &old_berval, NULL };
    struct berval *new_values[] = { &new_berval, NULL };
    LDAPMod remove, add;
    remove.mod_op = LDAP_MOD_DELETE | LDAP_MOD_BVALUES;
    remove.mod_type = "unicodePwd";
    remove.mod_vals.modv_bvals = old_values;
    add.mod_op = LDAP_MOD_ADD | LDAP_MOD_BVALUES;
    add.mod_type = "unicodePwd";
    add.mod_vals.modv_bvals = new_values;
    LDAPMod *mods[] = { &remove, &add, NULL };
    return ldap_modify_ext_s(ld, dn, mods, NULL, NULL);
}

// Active Directory's reset by an account allowed to: unicodePwd replaced with the new value.
static inline int portico_ldap_replace_unicode_pwd(LDAP *ld, const char *dn, char *new_value, size_t new_length) {
    struct berval new_berval = { (ber_len_t)new_length, new_value };
    struct berval *new_values[] = { &new_berval, NULL };
    LDAPMod replace;
    replace.mod_op = LDAP_MOD_REPLACE | LDAP_MOD_BVALUES;
    replace.mod_type = "unicodePwd";
    replace.mod_vals.modv_bvals = new_values;
    LDAPMod *mods[] = { &replace, NULL };
    return ldap_modify_ext_s(ld, dn, mods, NULL, NULL);
}

// One page of a paged search (RFC 2696): `cookie` is the previous page's (empty for the
// first) and is replaced by the next page's (empty after the last). The caller frees
// `*result` with ldap_msgfree and the cookie's bv_val with ber_memfree.
static inline int portico_ldap_search_page(LDAP *ld, const char *base, const char *filter, char **attributes, int page_size, long seconds,
                                           struct berval *cookie, LDAPMessage **result) {
    LDAPControl *page = NULL;
    int code = ldap_create_page_control(ld, page_size, cookie, 1, &page);
    if (code != LDAP_SUCCESS) return code;
    LDAPControl *controls[] = { page, NULL };
    struct timeval timeout = { seconds, 0 };
    code = ldap_search_ext_s(ld, base, LDAP_SCOPE_SUBTREE, filter, attributes, 0, controls, NULL, &timeout, 0, result);
    ldap_control_free(page);
    if (cookie->bv_val != NULL) { ber_memfree(cookie->bv_val); }
    cookie->bv_val = NULL;
    cookie->bv_len = 0;
    if (code != LDAP_SUCCESS) return code;
    int result_code = LDAP_SUCCESS;
    LDAPControl **returned = NULL;
    code = ldap_parse_result(ld, *result, &result_code, NULL, NULL, NULL, &returned, 0);
    if (code != LDAP_SUCCESS) return code;
    if (returned != NULL) {
        LDAPControl *response = ldap_control_find(LDAP_CONTROL_PAGEDRESULTS, returned, NULL);
        if (response != NULL) {
            ber_int_t estimate = 0;
            ldap_parse_pageresponse_control(ld, response, &estimate, cookie);
        }
        ldap_controls_free(returned);
    }
    return result_code;
}
#endif
